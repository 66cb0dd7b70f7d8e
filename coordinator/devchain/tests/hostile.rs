//! Whatever a client sends, the dev chain answers with a JSON-RPC error and keeps working.
#![allow(clippy::unwrap_used)]

use alloy_primitives::{Address, U256};
use rigd_devchain::DevChain;
use serde_json::{json, Value};

fn chain() -> DevChain {
    DevChain::new(31337, &[(Address::repeat_byte(1), U256::from(10u64))], 1)
}

fn code(answer: &Value) -> i64 {
    answer["error"]["code"].as_i64().unwrap_or(0)
}

#[test]
fn malformed_requests_get_errors_and_change_nothing() {
    let mut c = chain();
    assert_eq!(code(&c.answer(b"not json")), -32700);
    assert_eq!(code(&c.answer(br#"{"id":1}"#)), -32600);
    assert_eq!(code(&c.answer(br#"{"id":1,"method":"eth_nope"}"#)), -32601);
    let too_many = Value::Array(vec![json!({"id": 1, "method": "eth_chainId"}); 101]);
    assert_eq!(code(&c.answer(too_many.to_string().as_bytes())), -32600);
    for (method, params) in [
        ("eth_getBalance", json!(["0x12"])),
        ("eth_getBalance", json!([7])),
        ("eth_getTransactionCount", json!([])),
        ("eth_sendRawTransaction", json!(["0x"])),
        ("eth_sendRawTransaction", json!(["0x02f8"])),
        ("eth_sendRawTransaction", json!(["0xzz"])),
        ("eth_getTransactionReceipt", json!(["0x01"])),
        ("eth_call", json!([{"to": "0x1", "data": "0x"}])),
        ("eth_call", json!([{"value": "12"}])),
        (
            "eth_getLogs",
            json!([{"fromBlock": "0xffffffffffffffffffff"}]),
        ),
        ("eth_getLogs", json!([{"topics": "x"}])),
        ("eth_getBlockByNumber", json!(["0x-1", false])),
    ] {
        let call = json!({"jsonrpc": "2.0", "id": 9, "method": method, "params": params});
        let answer = c.answer(call.to_string().as_bytes());
        assert_eq!(code(&answer), -32602, "{method} {params}: {answer}");
        assert_eq!(answer["id"], 9);
    }
    assert_eq!(c.block_number(), 0, "nothing was mined");
    let balance = c.call(
        "eth_getBalance",
        &json!([Address::repeat_byte(1).to_string()]),
    );
    assert_eq!(balance.unwrap(), json!("0xa"));
}

#[test]
fn a_call_runs_against_the_state_and_keeps_nothing() {
    let mut c = chain();
    // Creating a contract whose code is empty: a call succeeds, nothing is mined.
    let out = c.call("eth_call", &json!([{"data": "0x"}])).unwrap();
    assert_eq!(out, json!("0x"));
    let gas = c.call("eth_estimateGas", &json!([{"data": "0x"}])).unwrap();
    assert!(gas.as_str().unwrap().starts_with("0x"));
    // A call that reverts (PUSH0 PUSH0 REVERT as init code) says so, with code 3.
    let reverted = c
        .call("eth_call", &json!([{"data": "0x5f5ffd"}]))
        .unwrap_err();
    assert_eq!(reverted.code, 3);
    assert_eq!(c.block_number(), 0);
}
