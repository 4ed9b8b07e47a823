//! Firewall rules, compiled from the configuration for per-packet matching.

use tandem_control::config::{Direction, Firewall, RuleAction};

use crate::session::{FlowKey, Origin};

/// A service set's firewall, ready to match first packets.
#[derive(Debug, Clone)]
pub struct Policy {
    fw: Firewall,
}

impl Policy {
    pub fn new(fw: &Firewall) -> Self {
        Self { fw: fw.clone() }
    }

    /// The rules it was compiled from.
    pub fn firewall(&self) -> &Firewall {
        &self.fw
    }

    /// The action for a new flow whose first packet is `k` (before NAT),
    /// started from `origin`, and the index of the rule that decided it
    /// (`None`: the default for its origin).
    pub fn decide(&self, k: &FlowKey, origin: Origin) -> (RuleAction, Option<usize>) {
        let (src, dst) = (k.src_ip(), k.dst_ip());
        for (i, r) in self.fw.rules.iter().enumerate() {
            let dir_ok = match r.direction {
                Direction::Any => true,
                Direction::Inside => origin == Origin::Inside,
                Direction::Outside => origin == Origin::Outside,
            };
            if dir_ok
                && r.source.is_none_or(|p| p.contains(src))
                && r.destination.is_none_or(|p| p.contains(dst))
                && r.protocol.is_none_or(|p| p.0 == k.proto)
                && r.source_ports.is_none_or(|p| p.contains(k.sport))
                && r.destination_ports.is_none_or(|p| p.contains(k.dport))
            {
                return (r.action, Some(i));
            }
        }
        let default = match origin {
            Origin::Inside => self.fw.inside_initiated,
            Origin::Outside => self.fw.outside_initiated,
        };
        (default, None)
    }
}

#[cfg(test)]
mod tests {
    use tandem_control::config::Config;

    use super::*;

    fn policy(rules: &str) -> Policy {
        let cfg = Config::parse(
            std::path::Path::new("t.toml"),
            &format!(
                "[interfaces]\ninside = \"a\"\noutside = \"b\"\n[[service_set]]\nname = \"s\"\n{rules}"
            ),
        )
        .unwrap();
        Policy::new(&cfg.service_sets[0].firewall)
    }

    fn tcp(src: [u8; 4], dst: [u8; 4], dport: u16) -> FlowKey {
        FlowKey::v4(src, dst, 40000, dport, 6)
    }

    #[test]
    fn defaults_allow_inside_and_drop_outside() {
        let p = policy("");
        let k = tcp([10, 0, 0, 1], [8, 8, 8, 8], 443);
        assert_eq!(p.decide(&k, Origin::Inside), (RuleAction::Forward, None));
        assert_eq!(p.decide(&k, Origin::Outside), (RuleAction::Drop, None));
    }

    #[test]
    fn first_matching_rule_wins() {
        let p = policy(
            r#"
            [[service_set.firewall.rules]]
            name = "no-telnet"
            protocol = "tcp"
            destination_ports = 23
            action = "reject"
            [[service_set.firewall.rules]]
            name = "ssh-in"
            direction = "outside"
            destination = "10.0.0.0/24"
            protocol = "tcp"
            destination_ports = "22"
            action = "forward"
            [[service_set.firewall.rules]]
            name = "no-dns-to-evil"
            destination = "192.0.2.0/24"
            protocol = 17
            destination_ports = "53-53"
            action = "drop"
            "#,
        );
        let inside = Origin::Inside;
        let outside = Origin::Outside;
        assert_eq!(
            p.decide(&tcp([10, 0, 0, 1], [8, 8, 8, 8], 23), inside),
            (RuleAction::Reject, Some(0))
        );
        assert_eq!(
            p.decide(&tcp([8, 8, 8, 8], [10, 0, 0, 1], 22), outside),
            (RuleAction::Forward, Some(1))
        );
        // Rule 1 is for outside-initiated flows only; the default applies.
        assert_eq!(
            p.decide(&tcp([10, 0, 0, 9], [10, 0, 0, 1], 22), inside),
            (RuleAction::Forward, None)
        );
        assert_eq!(
            p.decide(&tcp([8, 8, 8, 8], [10, 0, 1, 1], 22), outside),
            (RuleAction::Drop, None)
        );
        let dns = FlowKey::v4([10, 0, 0, 1], [192, 0, 2, 53], 5353, 53, 17);
        assert_eq!(p.decide(&dns, inside), (RuleAction::Drop, Some(2)));
        let dns_tcp = FlowKey { proto: 6, ..dns };
        assert_eq!(p.decide(&dns_tcp, inside), (RuleAction::Forward, None));
    }

    #[test]
    fn prefixes_never_match_across_families() {
        let p = policy(
            "[[service_set.firewall.rules]]\nname = \"all-v4\"\ndestination = \"0.0.0.0/0\"\naction = \"drop\"\n",
        );
        let v6 = FlowKey {
            src: "2001:db8::1"
                .parse::<std::net::Ipv6Addr>()
                .unwrap()
                .octets(),
            dst: "2001:db8::2"
                .parse::<std::net::Ipv6Addr>()
                .unwrap()
                .octets(),
            sport: 1,
            dport: 2,
            proto: 17,
        };
        assert_eq!(p.decide(&v6, Origin::Inside), (RuleAction::Forward, None));
        let v4 = FlowKey::v4([1, 2, 3, 4], [5, 6, 7, 8], 1, 2, 17);
        assert_eq!(p.decide(&v4, Origin::Inside), (RuleAction::Drop, Some(0)));
    }
}
