//! The fuzz entry point: everything the agent does with untrusted bytes before it
//! runs a command — split a frame, parse the request, build the nftables text —
//! plus the properties that must hold for any input. Shared by the cargo-fuzz
//! target (`fuzz/`, nightly) and the stable replay test (`tests/fuzz_replay.rs`).

use crate::firewall;
use crate::proto::{self, MAX_REQUEST, Request};

/// Runs one input; panics when a property is violated (that is the finding).
pub fn request(data: &[u8]) {
    let Ok((body, _rest)) = proto::decode_frame(data, MAX_REQUEST) else {
        return;
    };
    assert!(
        body.len() <= MAX_REQUEST as usize,
        "frame over the limit accepted"
    );
    let Ok(req) = Request::parse(body) else {
        return;
    };
    // What parses must re-encode to the same request: no lossy field.
    let again = serde_json::to_vec(&req).map(|b| Request::parse(&b));
    assert!(
        matches!(&again, Ok(Ok(r)) if *r == req),
        "request does not round-trip: {req:?}"
    );
    // Whatever parsed, the script text holds only what the generator writes.
    let script = match &req {
        Request::FirewallApply(c) | Request::FirewallVerify(c) => {
            let rs = firewall::build(c);
            let s = rs.apply_script();
            assert!(rs.verify(None).len() == 1);
            s
        }
        Request::KnockAdd(k) => firewall::knock_add_script(k),
        Request::KnockRemove(k) => firewall::knock_remove_script(k),
        Request::BridgeIsolate(p) => format!(
            "fwpr{}p{} tap{}i{}",
            p.vmid,
            p.net.get(),
            p.vmid,
            p.net.get()
        ),
    };
    assert!(
        firewall::script_is_plain(&script),
        "unexpected characters in\n{script}"
    );
}
