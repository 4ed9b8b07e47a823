//! Authentication of sync frames: HMAC-SHA256 with the pair's shared key.
//!
//! A hello is tagged with the shared key itself. It carries a nonce drawn
//! fresh for each connection; every later frame is tagged with a key
//! derived from both hellos' nonces and the direction it travels, so a
//! frame recorded on one connection, or reflected back to its sender, does
//! not verify. Within a connection the sequence number (checked by the
//! connection) refuses replays.
//!
//! A key rollover: besides its key a node may accept others. Hellos are
//! signed with each side's own key and verified with any accepted one;
//! both sides derive the connection's keys from the dialer's key (the
//! acceptor knows it as the one its hello verified with).

use hmac::{Hmac, Mac};
use sha2::Sha256;

use super::wire::TAG_LEN;

type HmacSha256 = Hmac<Sha256>;

/// Keys for one connection.
#[derive(Clone)]
pub struct Keys {
    /// This node's key first (it signs), then the others it accepts.
    psks: Vec<Vec<u8>>,
    /// Which of `psks` verified the peer's hello.
    heard: Option<usize>,
    /// Derived once both nonces are known: (sending, receiving).
    derived: Option<([u8; 32], [u8; 32])>,
}

fn mac(key: &[u8]) -> HmacSha256 {
    HmacSha256::new_from_slice(key).expect("HMAC takes keys of any length")
}

impl Keys {
    pub fn new(psk: &[u8]) -> Self {
        Self::accepting(psk, &[])
    }

    /// Signs with `psk`; hellos signed with any of `others` verify too.
    pub fn accepting(psk: &[u8], others: &[Vec<u8>]) -> Self {
        Self {
            psks: std::iter::once(psk.to_vec())
                .chain(others.iter().cloned())
                .collect(),
            heard: None,
            derived: None,
        }
    }

    /// Derives the connection's keys from the dialing side's nonce and
    /// the accepting side's; `dialed` says which one this node is.
    pub fn derive(&mut self, dialer: &[u8; 16], acceptor: &[u8; 16], we_dialed: bool) {
        // The dialer's key: ours if we dialed, else the one its hello
        // verified with.
        let psk = if we_dialed {
            &self.psks[0]
        } else {
            &self.psks[self.heard.unwrap_or(0)]
        };
        let dir = |d: u8| -> [u8; 32] {
            let mut m = mac(psk);
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

    /// The tag of an outgoing frame's header and body.
    pub fn sign(&self, signed: &[u8]) -> [u8; TAG_LEN] {
        let key = self.derived.as_ref().map_or(&self.psks[0][..], |(s, _)| s);
        let mut m = mac(key);
        m.update(signed);
        m.finalize().into_bytes().into()
    }

    /// Whether `tag` is right for an incoming frame (constant time per
    /// key tried). Before the derivation (the hello) any accepted key
    /// verifies, and the one that did is remembered.
    pub fn verify(&mut self, signed: &[u8], tag: &[u8]) -> bool {
        let check = |key: &[u8]| {
            let mut m = mac(key);
            m.update(signed);
            m.verify_slice(tag).is_ok()
        };
        if let Some((_, r)) = &self.derived {
            return check(r);
        }
        match self.psks.iter().position(|k| check(k)) {
            Some(i) => {
                self.heard = Some(i);
                true
            }
            None => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc4231_case_2() {
        // RFC 4231 test case 2: key "Jefe".
        let mut k = Keys::new(b"Jefe");
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

    #[test]
    fn a_rollover_accepts_either_key_and_both_sides_derive_alike() {
        let (old, new) = (b"the old key".to_vec(), b"the new key".to_vec());
        // The dialer already signs with the new key; the acceptor still
        // signs with the old one and accepts the new.
        let mut dialer = Keys::accepting(&new, std::slice::from_ref(&old));
        let mut acceptor = Keys::accepting(&old, std::slice::from_ref(&new));
        assert!(acceptor.verify(b"hello d", &dialer.sign(b"hello d")));
        assert!(dialer.verify(b"hello a", &acceptor.sign(b"hello a")));
        let (n1, n2) = ([1u8; 16], [2u8; 16]);
        dialer.derive(&n1, &n2, true);
        acceptor.derive(&n1, &n2, false);
        assert!(acceptor.verify(b"frame", &dialer.sign(b"frame")));
        assert!(dialer.verify(b"frame", &acceptor.sign(b"frame")));
        // A node that knows neither key is refused.
        let mut stranger = Keys::new(b"another key");
        assert!(!stranger.verify(b"hello d", &dialer.sign(b"hello d")));
    }
}
