//! Posting a notice to an owner's webhook. The URL is the owner's, so it is checked like
//! hostile input: only `http` and `https` (parsed by [`Url`]), a host that resolves to a
//! public address (loopback, private, link-local and other special ranges are refused unless
//! the operator allows them), a deadline on the whole exchange, and the answer's body never
//! read.

use rigd_client::http::{exchange, Bounds, HttpError, Request, Url};
use std::net::IpAddr;
use std::time::Duration;

/// The longest a post may take, connection included.
pub const TIMEOUT: Duration = Duration::from_secs(10);

/// Whether the dashboard posts to `ip` when special addresses are not allowed.
pub fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            let [a, b, ..] = v4.octets();
            !(v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_broadcast()
                || v4.is_multicast()
                || v4.is_documentation()
                || a == 0
                || (a == 100 && (64..128).contains(&b))
                || (a == 198 && (b == 18 || b == 19))
                || a >= 240)
        }
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return is_public(IpAddr::V4(v4));
            }
            let first = v6.segments()[0];
            !(v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || (first & 0xfe00) == 0xfc00
                || (first & 0xffc0) == 0xfe80)
        }
    }
}

/// Posts the JSON `body` to `url` with the delivery id and signature headers; returns the
/// HTTP status of the answer.
pub async fn post(
    url: &Url,
    body: &str,
    headers: &[(&str, String)],
    allow_private: bool,
) -> Result<u16, HttpError> {
    let headers: Vec<(&str, &str)> = headers.iter().map(|(n, v)| (*n, v.as_str())).collect();
    let request = Request {
        method: "POST",
        headers: &headers,
        json: Some(body),
    };
    let bounds = Bounds {
        timeout: TIMEOUT,
        max_body: 0,
        reach: if allow_private { |_| true } else { is_public },
        agent: "rigd-dashboard",
    };
    Ok(exchange(url, request, bounds).await?.status)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn special_addresses_are_not_public() {
        for ip in [
            "127.0.0.1",
            "10.1.2.3",
            "192.168.0.1",
            "172.16.0.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "::1",
            "fd00::1",
            "fe80::1",
            "::ffff:127.0.0.1",
        ] {
            let ip: IpAddr = ip.parse().unwrap_or_else(|e| panic!("{e}"));
            assert!(!is_public(ip), "{ip}");
        }
        for ip in ["1.1.1.1", "2606:4700::1111"] {
            let ip: IpAddr = ip.parse().unwrap_or_else(|e| panic!("{e}"));
            assert!(is_public(ip), "{ip}");
        }
    }
}
