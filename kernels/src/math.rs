//! `exp` and `ln` built from basic IEEE-754 operations only.
//!
//! Platform math libraries may round transcendental functions differently;
//! these versions use only `+ - * /`, rounding and bit manipulation, all of
//! which IEEE-754 specifies exactly, so every machine gets the same bits.

/// High part of ln(2), with trailing zero bits so `k * LN2_HI` is exact.
const LN2_HI: f64 = f64::from_bits(0x3FE6_2E42_FEE0_0000);
/// Low part of ln(2): `LN2_HI + LN2_LO` is ln(2) to about 2^-85.
const LN2_LO: f64 = f64::from_bits(0x3DEA_39EF_3579_3C76);

/// Natural exponential, accurate to a few ulp.
pub(crate) fn exp(x: f64) -> f64 {
    if x.is_nan() {
        return x;
    }
    if x > 709.0 {
        return f64::INFINITY;
    }
    if x < -708.0 {
        return 0.0;
    }
    let k = (x * std::f64::consts::LOG2_E).round();
    let r = (x - k * LN2_HI) - k * LN2_LO;
    // Taylor series of e^r for |r| <= 0.35 in Horner form.
    let mut p = 1.0;
    for i in (1..=14u32).rev() {
        p = 1.0 + r * p / f64::from(i);
    }
    // k lies in -1021..=1023 here, so 2^k is a normal number.
    let biased = (k as i64 + 1023) as u64;
    p * f64::from_bits(biased << 52)
}

/// Natural logarithm, accurate to a few ulp.
pub(crate) fn ln(x: f64) -> f64 {
    if x.is_nan() || x < 0.0 {
        return f64::NAN;
    }
    if x == 0.0 {
        return f64::NEG_INFINITY;
    }
    if x.is_infinite() {
        return x;
    }
    let mut e: i64 = 0;
    let mut v = x;
    if v < f64::MIN_POSITIVE {
        // Subnormal: scale into the normal range by 2^54.
        v *= 18_014_398_509_481_984.0;
        e -= 54;
    }
    let bits = v.to_bits();
    e += ((bits >> 52) & 0x7FF) as i64 - 1023;
    let mut m = f64::from_bits((bits & ((1u64 << 52) - 1)) | (1023u64 << 52));
    if m > std::f64::consts::SQRT_2 {
        m *= 0.5;
        e += 1;
    }
    // ln(m) = 2 atanh(t) with |t| <= 0.172.
    let t = (m - 1.0) / (m + 1.0);
    let t2 = t * t;
    let mut s = 0.0;
    for n in (0..=12u32).rev() {
        s = s * t2 + 1.0 / f64::from(2 * n + 1);
    }
    let ef = e as f64;
    ef * LN2_HI + (ef * LN2_LO + 2.0 * t * s)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rel_err(a: f64, b: f64) -> f64 {
        if a == b {
            0.0
        } else {
            (a - b).abs() / b.abs().max(f64::MIN_POSITIVE)
        }
    }

    #[test]
    fn exp_agrees_with_std_to_1e_minus_14() {
        let mut x = -700.0;
        while x < 700.0 {
            assert!(rel_err(exp(x), x.exp()) < 1e-14, "exp({x})");
            x += 0.137;
        }
        for x in [0.0f64, 1e-300, -1e-12, 0.5, -0.5, 1.0] {
            assert!(rel_err(exp(x), x.exp()) < 1e-15, "exp({x})");
        }
        assert_eq!(exp(800.0), f64::INFINITY);
        assert_eq!(exp(-800.0), 0.0);
        assert!(exp(f64::NAN).is_nan());
    }

    #[test]
    fn ln_agrees_with_std_to_1e_minus_15() {
        for x in [
            1e-310f64, 1e-300, 1e-5, 0.3, 0.999_999, 1.0, 1.000_001, 2.0, 10.0, 1e300,
        ] {
            let want = x.ln();
            let got = ln(x);
            assert!(
                (got - want).abs() <= 1e-15 * want.abs().max(1.0),
                "ln({x}) = {got}, want {want}"
            );
        }
        let mut x = 1e-3;
        while x < 1e3 {
            assert!(
                (ln(x) - x.ln()).abs() <= 1e-15 * x.ln().abs().max(1.0),
                "ln({x})"
            );
            x *= 1.0173;
        }
        assert_eq!(ln(1.0), 0.0);
        assert_eq!(ln(0.0), f64::NEG_INFINITY);
        assert!(ln(-1.0).is_nan());
    }
}
