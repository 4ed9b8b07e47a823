//! Authentication of sync frames: HMAC-SHA256 with the pair's shared key.
//!
//! A hello is tagged with the shared key itself. It carries a nonce drawn
//! fresh for each connection; every later frame is tagged with a key
//! derived from both hellos' nonces and the direction it travels, so a
//! frame recorded on one connection, or reflected back to its sender, does
//! not verify. Within a connection the sequence number (checked by the
//! connection) refuses replays.

use hmac::{Hmac, Mac};
use sha2::Sha256;

use super::wire::TAG_LEN;

type HmacSha256 = Hmac<Sha256>;

/// Keys for one connection.
#[derive(Clone)]
pub struct Keys {
    psk: Vec<u8>,
    /// Derived once both nonces are known: (sending, receiving).
    derived: Option<([u8; 32], [u8; 32])>,
}

fn mac(key: &[u8]) -> HmacSha256 {
    HmacSha256::new_from_slice(key).expect("HMAC takes keys of any length")
}

impl Keys {
    pub fn new(psk: &[u8]) -> Self {
        Self {
            psk: psk.to_vec(),
            derived: None,
        }
    }

    /// Derives the connection's keys from the dialing side's nonce and
    /// the accepting side's; `dialed` says which one this node is.
    pub fn derive(&mut self, dialer: &[u8; 16], acceptor: &[u8; 16], we_dialed: bool) {
        let dir = |d: u8| -> [u8; 32] {
            let mut m = mac(&self.psk);
            m.update(b"tandem sync 1 ");
            m.update(dialer);
            m.update(acceptor);
            m.update(&[d]);
            m.finalize().into_bytes().into()
        };
        let (to_acceptor, to_dialer) = (dir(0), dir(1));
        self.derived = Some(if we_dialed {
            (to_acceptor, to_dialer)
        } else {
            (to_dialer, to_acceptor)
        });
    }

    fn key(&self, sending: bool) -> &[u8] {
        match &self.derived {
            Some((s, _)) if sending => s,
            Some((_, r)) => r,
            None => &self.psk,
        }
    }

    /// The tag of an outgoing frame's header and body.
    pub fn sign(&self, signed: &[u8]) -> [u8; TAG_LEN] {
        let mut m = mac(self.key(true));
        m.update(signed);
        m.finalize().into_bytes().into()
    }

    /// Whether `tag` is right for an incoming frame (constant time).
    pub fn verify(&self, signed: &[u8], tag: &[u8]) -> bool {
        let mut m = mac(self.key(false));
        m.update(signed);
        m.verify_slice(tag).is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc4231_case_2() {
        // RFC 4231 test case 2: key "Jefe".
        let k = Keys::new(b"Jefe");
        let tag = k.sign(b"what do ya want for nothing?");
        let want = "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843";
        let want: Vec<u8> = (0..want.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&want[i..i + 2], 16).unwrap())
            .collect();
        assert_eq!(tag[..], want[..]);
        assert!(k.verify(b"what do ya want for nothing?", &tag));
        assert!(!k.verify(b"what do ya want for nothing!", &tag));
        assert!(!Keys::new(b"jefe").verify(b"what do ya want for nothing?", &tag));
    }

    #[test]
    fn derived_keys_bind_direction_and_nonces() {
        let (n1, n2) = ([1u8; 16], [2u8; 16]);
        let (mut a, mut b) = (Keys::new(b"k"), Keys::new(b"k"));
        a.derive(&n1, &n2, true);
        b.derive(&n1, &n2, false);
        let tag = a.sign(b"frame");
        assert!(b.verify(b"frame", &tag), "the peer verifies");
        assert!(
            !a.verify(b"frame", &tag),
            "a frame reflected to its sender fails"
        );
        let mut c = Keys::new(b"k");
        c.derive(&n1, &[3u8; 16], false);
        assert!(
            !c.verify(b"frame", &tag),
            "another connection's frame fails"
        );
        let hello = Keys::new(b"k").sign(b"hello");
        assert!(Keys::new(b"k").verify(b"hello", &hello));
    }
}
