//! The sync protocol's framing and message decoder on arbitrary bytes:
//! every input is a frame, an error or "need more", never a panic; a
//! message that decodes encodes back to the same body.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tandem_control::sync::wire::{Kind, Message, frame};

fuzz_target!(|data: &[u8]| {
    if let Ok(Some(f)) = frame(data) {
        let body = &data[f.body.clone()];
        if let Ok(m) = Message::decode(f.header.kind, body) {
            let mut again = Vec::new();
            m.put_body(&mut again);
            assert_eq!(again, body, "{m:?} does not round-trip");
        }
    }
    // Bodies of every kind, without the framing in front.
    for kind in Kind::ALL {
        let _ = Message::decode(kind, data);
    }
});
