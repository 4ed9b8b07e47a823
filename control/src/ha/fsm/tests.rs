use proptest::prelude::*;

use super::*;

const HOLD: Duration = Duration::from_secs(1);

/// A node whose sync link is Hot (the tests of the Hot rules start
/// from [`cold`]).
fn node(id: u32, priority: u8) -> Fsm {
    let mut f = cold(id, priority);
    f.handle(ms(0), Event::Sync { hot: true });
    f
}

fn cold(id: u32, priority: u8) -> Fsm {
    Fsm::new(Settings {
        node_id: id,
        priority,
        preempt: false,
        hold_down: HOLD,
        policy: Policy::default(),
    })
}

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn view(state: State) -> PeerView {
    PeerView {
        state,
        priority: 100,
        node_id: 2,
        healthy: true,
        released: false,
        acquire: false,
        force: false,
        hot: true,
        term: 0,
    }
}

fn link_down(id: u16) -> Event {
    Event::Failure {
        check: Check::Link,
        id,
    }
}

fn link_up(id: u16) -> Event {
    Event::Recovery {
        check: Check::Link,
        id,
    }
}

fn transitions(f: &Fsm, t: Transition) -> [u64; 2] {
    f.counts.transitions[t as usize]
}

fn monitored(f: &Fsm, m: Monitored) -> [u64; 2] {
    f.counts.monitored[m as usize]
}

/// A node that started alone and became MASTER.
fn master(id: u32, priority: u8) -> Fsm {
    let mut f = node(id, priority);
    f.handle(ms(0), Event::Start);
    f.handle(HOLD, Event::Timer);
    assert_eq!(f.state(), State::Master);
    f
}

/// A node that started, heard a MASTER and became STANDBY.
fn standby(id: u32, priority: u8) -> Fsm {
    let mut f = node(id, priority);
    f.handle(ms(0), Event::Start);
    f.handle(ms(10), Event::Peer(view(State::Master)));
    assert_eq!(f.state(), State::Standby);
    f
}

/// Delivers each node's heartbeat to the other until neither changes.
fn exchange(a: &mut Fsm, b: &mut Fsm, now: Duration) {
    for _ in 0..16 {
        let (va, vb) = (a.view(), b.view());
        b.handle(now, Event::Peer(va));
        a.handle(now, Event::Peer(vb));
        if a.view() == va && b.view() == vb {
            return;
        }
    }
    panic!("heartbeats never settled: {:?} / {:?}", a.view(), b.view());
}

#[test]
fn init_waits_for_start_and_ignores_everything_else() {
    let mut f = node(1, 100);
    assert_eq!(f.state(), State::Init);
    assert!(
        f.handle(ms(0), Event::Peer(view(State::Standby)))
            .is_empty()
    );
    assert!(f.handle(ms(0), Event::Timer).is_empty());
    f.handle(
        ms(0),
        Event::Manual {
            acquire: true,
            force: true,
        },
    );
    assert_eq!(f.state(), State::Init);
    assert_eq!(transitions(&f, Transition::AcquireManual), [1, 1]);
    let out = f.handle(ms(5), Event::Start);
    // The peer heard before Start is STANDBY and loses the tie-break
    // (higher node id): this node takes over at once.
    assert_eq!(f.state(), State::Master);
    assert_eq!(out, vec![Action::TakeOver, Action::Announce]);
}

#[test]
fn alone_at_startup_becomes_master_after_the_hold_down() {
    let mut f = node(1, 100);
    let out = f.handle(ms(0), Event::Start);
    assert_eq!(f.state(), State::Waiting);
    assert_eq!(out, vec![Action::Announce, Action::Arm(Some(HOLD))]);
    // Early: nothing.
    assert!(f.handle(ms(999), Event::Timer).is_empty());
    assert_eq!(f.state(), State::Waiting);
    let out = f.handle(HOLD, Event::Timer);
    assert_eq!(f.state(), State::Master);
    assert_eq!(
        out,
        vec![Action::TakeOver, Action::Announce, Action::Arm(None)]
    );
    assert_eq!(transitions(&f, Transition::AcquireAuto), [1, 0]);
}

#[test]
fn alone_and_unhealthy_at_startup_is_standby_warned() {
    let mut f = node(1, 100);
    f.handle(ms(0), Event::Start);
    f.handle(ms(1), link_down(0));
    assert_eq!(f.state(), State::Waiting);
    assert!(!f.view().healthy);
    f.handle(HOLD, Event::Timer);
    assert_eq!(f.state(), State::StandbyWarned);
    // Recovery, with nobody else: it waits once more to hear a peer,
    // then takes over.
    f.handle(ms(2000), link_up(0));
    assert_eq!(f.state(), State::Waiting);
    let out = f.handle(ms(2000) + HOLD, Event::Timer);
    assert_eq!(f.state(), State::Master);
    assert_eq!(out[0], Action::TakeOver);
}

#[test]
fn joining_a_master_is_standby_without_preemption() {
    let mut f = node(1, 250);
    f.handle(ms(0), Event::Start);
    let out = f.handle(ms(10), Event::Peer(view(State::Master)));
    assert_eq!(f.state(), State::Standby);
    assert_eq!(out, vec![Action::Announce, Action::Arm(None)]);
    // A higher priority changes nothing while preemption is off.
    f.handle(ms(5000), Event::Timer);
    f.handle(ms(5000), Event::Peer(view(State::Master)));
    assert_eq!(f.state(), State::Standby);
}

#[test]
fn joining_an_ineligible_peer_takes_over() {
    for peer in [
        view(State::StandbyWarned),
        PeerView {
            healthy: false,
            ..view(State::Standby)
        },
    ] {
        let mut f = node(3, 1);
        f.handle(ms(0), Event::Start);
        f.handle(ms(10), Event::Peer(peer));
        assert_eq!(f.state(), State::Master, "{peer:?}");
    }
}

#[test]
fn two_starting_nodes_agree_by_priority_then_node_id() {
    for (pa, pb, winner) in [(200, 100, 1), (100, 200, 2), (100, 100, 1)] {
        let mut a = node(1, pa);
        let mut b = node(2, pb);
        a.handle(ms(0), Event::Start);
        b.handle(ms(0), Event::Start);
        exchange(&mut a, &mut b, ms(5));
        let (w, l) = if winner == 1 { (&a, &b) } else { (&b, &a) };
        assert_eq!(w.state(), State::Master, "{pa} {pb}");
        assert_eq!(l.state(), State::Standby, "{pa} {pb}");
    }
}

#[test]
fn a_critical_failure_on_the_master_hands_over_to_the_standby() {
    let mut a = master(1, 100);
    let mut b = standby(2, 100);
    exchange(&mut a, &mut b, ms(2000));
    let out = a.handle(ms(2001), link_down(1));
    assert_eq!(a.state(), State::StandbyWarned);
    assert_eq!(
        out[0],
        Action::Release,
        "leaving MASTER undoes the takeover first"
    );
    assert_eq!(monitored(&a, Monitored::LinkDown), [1, 0]);
    assert_eq!(transitions(&a, Transition::ReleaseAuto), [1, 0]);
    exchange(&mut a, &mut b, ms(2002));
    assert_eq!(b.state(), State::Master);
    assert_eq!(monitored(&b, Monitored::PeerRelease), [1, 0]);
    assert_eq!(a.state(), State::StandbyWarned);
    assert_eq!(monitored(&a, Monitored::PeerAcquire), [1, 1]);
    // A second failure while warned: no transition, ignored.
    a.handle(ms(2003), link_down(0));
    assert_eq!(monitored(&a, Monitored::LinkDown), [2, 1]);
    // The same link reported down again is ignored too.
    a.handle(ms(2004), link_down(0));
    assert_eq!(monitored(&a, Monitored::LinkDown), [3, 2]);
    // Recovering every link makes it eligible again; it stays STANDBY.
    a.handle(ms(2005), link_up(0));
    assert_eq!(a.state(), State::StandbyWarned);
    a.handle(ms(2006), link_up(1));
    assert_eq!(a.state(), State::Standby);
    exchange(&mut a, &mut b, ms(2007));
    assert_eq!((a.state(), b.state()), (State::Standby, State::Master));
}

#[test]
fn a_failing_master_with_nobody_to_take_over_stays_master() {
    let mut a = master(1, 100);
    let out = a.handle(ms(2000), link_down(0));
    assert_eq!(a.state(), State::Master);
    assert_eq!(out, vec![Action::Announce], "health is announced");
    assert_eq!(monitored(&a, Monitored::LinkDown), [1, 1]);
    assert_eq!(transitions(&a, Transition::ReleaseAuto), [1, 1]);
    // A warned peer cannot take over either.
    a.handle(ms(2001), Event::Peer(view(State::StandbyWarned)));
    assert_eq!(a.state(), State::Master);
}

#[test]
fn warn_only_failures_change_nothing() {
    let mut f = Fsm::new(Settings {
        node_id: 1,
        priority: 100,
        preempt: false,
        hold_down: HOLD,
        policy: Policy {
            critical: [true, false, false],
        },
    });
    f.handle(ms(0), Event::Start);
    f.handle(HOLD, Event::Timer);
    f.handle(ms(1001), Event::Peer(view(State::Standby)));
    let out = f.handle(
        ms(1002),
        Event::Failure {
            check: Check::Probe,
            id: 0,
        },
    );
    assert!(out.is_empty());
    assert_eq!(f.state(), State::Master);
    assert!(f.view().healthy);
    assert_eq!(f.failed().collect::<Vec<_>>(), vec![(Check::Probe, 0)]);
    assert_eq!(monitored(&f, Monitored::ProbeFailure), [1, 1]);
    f.handle(
        ms(1003),
        Event::Failure {
            check: Check::Stall,
            id: 1,
        },
    );
    assert_eq!(monitored(&f, Monitored::WorkerStall), [1, 1]);
    assert_eq!(f.state(), State::Master);
}

#[test]
fn a_standby_takes_over_from_a_dead_peer() {
    let mut b = standby(2, 100);
    let out = b.handle(ms(100), Event::PeerDead);
    assert_eq!(b.state(), State::Master);
    assert_eq!(out[0], Action::TakeOver);
    assert_eq!(monitored(&b, Monitored::PeerDead), [1, 0]);
    assert_eq!(transitions(&b, Transition::AcquireAuto), [1, 0]);
    // A second death report (nobody to lose) is ignored.
    b.handle(ms(101), Event::PeerDead);
    assert_eq!(monitored(&b, Monitored::PeerDead), [2, 1]);
}

#[test]
fn a_warned_standby_does_not_take_over_from_a_dead_peer() {
    let mut b = standby(2, 100);
    b.handle(
        ms(50),
        Event::Failure {
            check: Check::Stall,
            id: 0,
        },
    );
    assert_eq!(b.state(), State::StandbyWarned);
    assert_eq!(monitored(&b, Monitored::WorkerStall), [1, 0]);
    b.handle(ms(100), Event::PeerDead);
    assert_eq!(b.state(), State::StandbyWarned);
    assert_eq!(monitored(&b, Monitored::PeerDead), [1, 1]);
    assert_eq!(transitions(&b, Transition::AcquireAuto), [1, 1]);
    // Recovered with the peer still unheard: it waits as at startup,
    // then takes over.
    b.handle(
        ms(200),
        Event::Recovery {
            check: Check::Stall,
            id: 0,
        },
    );
    assert_eq!(b.state(), State::Waiting);
    b.handle(ms(200) + HOLD, Event::Timer);
    assert_eq!(b.state(), State::Master);
}

#[test]
fn a_master_back_from_box_death_waits_and_joins_as_standby() {
    // A loses every link: its heartbeats stop, B takes over, A hears
    // nobody. When its links return it must not take mastership back on
    // the strength of a peer death it caused itself.
    let mut a = master(1, 200);
    a.handle(ms(10), Event::Peer(view(State::Standby)));
    a.handle(ms(20), link_down(0));
    a.handle(ms(20), link_down(1));
    assert_eq!(a.state(), State::StandbyWarned);
    a.handle(ms(170), Event::PeerDead);
    assert_eq!(a.state(), State::StandbyWarned);
    a.handle(ms(5000), link_up(0));
    let acts = a.handle(ms(5000), link_up(1));
    assert_eq!(a.state(), State::Waiting);
    assert!(!acts.contains(&Action::TakeOver), "{acts:?}");
    assert!(
        acts.contains(&Action::Arm(Some(ms(5000) + HOLD))),
        "{acts:?}"
    );
    a.handle(ms(5050), Event::Peer(view(State::Master)));
    assert_eq!(a.state(), State::Standby);
    // The startup wait is gone with WAITING.
    a.handle(ms(5000) + HOLD, Event::Timer);
    assert_eq!(a.state(), State::Standby);
}

#[test]
fn manual_release_hands_over_and_the_old_master_stays_standby() {
    let mut a = master(1, 200);
    let mut b = standby(2, 100);
    exchange(&mut a, &mut b, ms(2000));
    let out = a.handle(
        ms(2001),
        Event::Manual {
            acquire: false,
            force: false,
        },
    );
    assert_eq!(out, vec![Action::Release, Action::Announce]);
    assert_eq!(a.state(), State::Standby);
    assert!(a.view().released);
    assert_eq!(transitions(&a, Transition::ReleaseManual), [1, 0]);
    exchange(&mut a, &mut b, ms(2002));
    // B takes over although A has the higher priority: A released.
    assert_eq!((a.state(), b.state()), (State::Standby, State::Master));
    assert!(!a.view().released, "cleared once a master is seen");
    assert_eq!(transitions(&b, Transition::AcquireAuto), [1, 0]);
    assert_eq!(monitored(&b, Monitored::PeerRelease), [1, 0]);
}

#[test]
fn manual_release_without_a_peer_to_take_over_is_ignored() {
    let mut a = master(1, 100);
    let release = Event::Manual {
        acquire: false,
        force: false,
    };
    assert!(a.handle(ms(2000), release).is_empty());
    a.handle(ms(2001), Event::Peer(view(State::StandbyWarned)));
    assert!(a.handle(ms(2002), release).is_empty());
    assert_eq!(a.state(), State::Master);
    assert_eq!(transitions(&a, Transition::ReleaseManual), [2, 2]);
    // Releasing when not master is ignored as well.
    let mut b = standby(2, 100);
    b.handle(ms(0), release);
    assert_eq!(transitions(&b, Transition::ReleaseManual), [1, 1]);
}

#[test]
fn forced_release_hands_over_to_a_warned_peer_which_keeps_it() {
    let mut a = master(1, 100);
    let mut b = standby(2, 100);
    exchange(&mut a, &mut b, ms(2000));
    b.handle(ms(2001), link_down(0));
    exchange(&mut a, &mut b, ms(2002));
    assert_eq!(
        (a.state(), b.state()),
        (State::Master, State::StandbyWarned)
    );
    a.handle(
        ms(2003),
        Event::Manual {
            acquire: false,
            force: true,
        },
    );
    assert_eq!(a.state(), State::Standby);
    exchange(&mut a, &mut b, ms(2004));
    assert_eq!((a.state(), b.state()), (State::Standby, State::Master));
    // Pinned: B does not bounce mastership back while its health is as it was.
    exchange(&mut a, &mut b, ms(2005));
    assert_eq!(b.state(), State::Master);
    // A new health change unpins it: another failure hands back to A.
    b.handle(ms(2006), link_down(1));
    exchange(&mut a, &mut b, ms(2007));
    assert_eq!(
        (a.state(), b.state()),
        (State::Master, State::StandbyWarned)
    );
}

#[test]
fn manual_acquire_asks_the_master_to_release_then_takes_over() {
    let mut a = master(1, 100);
    let mut b = standby(2, 100);
    exchange(&mut a, &mut b, ms(2000));
    let out = b.handle(
        ms(2001),
        Event::Manual {
            acquire: true,
            force: false,
        },
    );
    assert_eq!(b.state(), State::Waiting);
    assert!(b.view().acquire);
    assert_eq!(
        out,
        vec![Action::Announce, Action::Arm(Some(ms(2001) + HOLD))]
    );
    // The master hears the request and releases before B takes over.
    let out = a.handle(ms(2002), Event::Peer(b.view()));
    assert_eq!(out[0], Action::Release);
    assert_eq!(a.state(), State::Standby);
    assert_eq!(monitored(&a, Monitored::PeerAcquire), [1, 0]);
    assert_eq!(transitions(&a, Transition::ReleaseAuto), [1, 0]);
    let out = b.handle(ms(2003), Event::Peer(a.view()));
    assert_eq!(out[0], Action::TakeOver);
    assert_eq!(b.state(), State::Master);
    assert_eq!(transitions(&b, Transition::AcquireManual), [1, 0]);
    exchange(&mut a, &mut b, ms(2004));
    assert_eq!((a.state(), b.state()), (State::Standby, State::Master));
    // Acquiring on the master is ignored.
    b.handle(
        ms(2005),
        Event::Manual {
            acquire: true,
            force: false,
        },
    );
    assert_eq!(transitions(&b, Transition::AcquireManual), [2, 1]);
}

#[test]
fn a_request_the_master_never_answers_falls_back_to_standby() {
    let mut b = standby(2, 100);
    b.handle(
        ms(100),
        Event::Manual {
            acquire: true,
            force: false,
        },
    );
    assert_eq!(b.state(), State::Waiting);
    // The master keeps saying MASTER (an older version, say).
    b.handle(ms(600), Event::Peer(view(State::Master)));
    assert_eq!(b.state(), State::Waiting);
    let out = b.handle(ms(100) + HOLD, Event::Timer);
    assert_eq!(b.state(), State::Standby);
    assert_eq!(out, vec![Action::Announce, Action::Arm(None)]);
    assert_eq!(transitions(&b, Transition::AcquireManual), [1, 1]);
}

#[test]
fn a_request_whose_master_dies_takes_over() {
    let mut b = standby(2, 100);
    b.handle(
        ms(100),
        Event::Manual {
            acquire: true,
            force: false,
        },
    );
    b.handle(ms(200), Event::PeerDead);
    assert_eq!(b.state(), State::Master);
}

#[test]
fn a_warned_node_acquires_only_by_force() {
    let mut a = master(1, 100);
    let mut b = standby(2, 100);
    exchange(&mut a, &mut b, ms(2000));
    b.handle(ms(2001), link_down(0));
    exchange(&mut a, &mut b, ms(2002));
    b.handle(
        ms(2003),
        Event::Manual {
            acquire: true,
            force: false,
        },
    );
    assert_eq!(b.state(), State::StandbyWarned);
    assert_eq!(transitions(&b, Transition::AcquireManual), [1, 1]);
    b.handle(
        ms(2004),
        Event::Manual {
            acquire: true,
            force: true,
        },
    );
    assert_eq!(b.state(), State::Waiting);
    assert!(b.view().force);
    exchange(&mut a, &mut b, ms(2005));
    assert_eq!((a.state(), b.state()), (State::Standby, State::Master));
    // Pinned by force: it keeps mastership despite its failed link.
    exchange(&mut a, &mut b, ms(2006));
    assert_eq!(b.state(), State::Master);
}

#[test]
fn dual_master_resolves_to_the_healthier_then_higher_priority() {
    // Both started alone (term 1 each); the link heals.
    let mut a = master(1, 100);
    let mut b = master(2, 200);
    exchange(&mut a, &mut b, ms(3000));
    assert_eq!((a.state(), b.state()), (State::Standby, State::Master));
    assert_eq!(transitions(&a, Transition::ReleaseAuto), [1, 0]);

    let mut a = master(1, 100);
    let mut b = master(2, 200);
    b.handle(ms(2500), link_down(0));
    exchange(&mut a, &mut b, ms(3000));
    assert_eq!(
        (a.state(), b.state()),
        (State::Master, State::StandbyWarned)
    );
}

#[test]
fn both_standby_resolves_and_a_releaser_yields() {
    let mut a = standby(1, 200);
    let mut b = standby(2, 100);
    exchange(&mut a, &mut b, ms(100));
    assert_eq!((a.state(), b.state()), (State::Master, State::Standby));
}

#[test]
fn preemption_takes_mastership_back_after_the_hold_down() {
    let settings = Settings {
        node_id: 1,
        priority: 200,
        preempt: true,
        hold_down: HOLD,
        policy: Policy::default(),
    };
    let mut a = Fsm::new(settings);
    let mut b = master(2, 100);
    a.handle(ms(1000), Event::Start);
    let out = a.handle(ms(1010), Event::Peer(b.view()));
    assert_eq!(a.state(), State::Standby);
    // Not before the sessions are here.
    assert!(!out.iter().any(|a| matches!(a, Action::Arm(Some(_)))));
    let out = a.handle(ms(1010), Event::Sync { hot: true });
    assert!(out.contains(&Action::Arm(Some(ms(1010) + HOLD))), "{out:?}");
    exchange(&mut a, &mut b, ms(1500));
    assert_eq!(a.state(), State::Standby);
    a.handle(ms(2010), Event::Timer);
    assert_eq!(a.state(), State::Waiting);
    exchange(&mut a, &mut b, ms(2011));
    assert_eq!((a.state(), b.state()), (State::Master, State::Standby));
    assert_eq!(transitions(&a, Transition::AcquireAuto), [1, 0]);
    // A lower-priority preempting node waits forever.
    let mut c = Fsm::new(Settings {
        priority: 50,
        ..settings
    });
    c.handle(ms(0), Event::Start);
    let out = c.handle(ms(1), Event::Peer(view(State::Master)));
    assert!(!out.iter().any(|a| matches!(a, Action::Arm(Some(_)))));
}

#[test]
fn acquire_is_refused_until_this_node_is_hot_unless_forced() {
    let mut a = master(1, 100);
    let mut b = cold(2, 100);
    b.handle(ms(0), Event::Start);
    exchange(&mut a, &mut b, ms(10));
    assert_eq!(b.state(), State::Standby);
    assert!(!b.view().hot);
    assert_eq!(b.refusal(true, false), Some(Refusal::NotHot));
    let plain = Event::Manual {
        acquire: true,
        force: false,
    };
    assert!(b.handle(ms(20), plain).is_empty());
    assert_eq!(b.state(), State::Standby);
    assert_eq!(transitions(&b, Transition::AcquireManual), [1, 1]);
    // Hot: the same request goes through.
    b.handle(ms(30), Event::Sync { hot: true });
    assert_eq!(b.refusal(true, false), None);
    // Cold again, and forced: B takes over, and it counts.
    b.handle(ms(40), Event::Sync { hot: false });
    assert_eq!(b.refusal(true, true), None);
    b.handle(
        ms(50),
        Event::Manual {
            acquire: true,
            force: true,
        },
    );
    exchange(&mut a, &mut b, ms(60));
    assert_eq!((a.state(), b.state()), (State::Standby, State::Master));
    assert_eq!(b.counts.takeovers_without_hot, 1);
    assert_eq!(a.counts.takeovers_without_hot, 0);
}

#[test]
fn the_master_does_not_release_to_a_plain_request_from_a_peer_not_hot() {
    let mut a = master(1, 100);
    let asking = PeerView {
        acquire: true,
        hot: false,
        ..view(State::Waiting)
    };
    a.handle(ms(10), Event::Peer(asking));
    assert_eq!(a.state(), State::Master);
    a.handle(
        ms(20),
        Event::Peer(PeerView {
            force: true,
            ..asking
        }),
    );
    assert_eq!(a.state(), State::Standby);
}

#[test]
fn release_is_refused_until_the_peer_is_hot_unless_forced() {
    let mut a = master(1, 100);
    let cold_peer = PeerView {
        hot: false,
        ..view(State::Standby)
    };
    a.handle(ms(10), Event::Peer(cold_peer));
    assert_eq!(
        a.refusal(false, false),
        Some(Refusal::PeerNotHot(cold_peer))
    );
    a.handle(
        ms(20),
        Event::Manual {
            acquire: false,
            force: false,
        },
    );
    assert_eq!(a.state(), State::Master);
    assert_eq!(transitions(&a, Transition::ReleaseManual), [1, 1]);
    a.handle(
        ms(30),
        Event::Manual {
            acquire: false,
            force: true,
        },
    );
    assert_eq!(a.state(), State::Standby);
    // Releasing again, off MASTER, and to nobody, say why.
    assert_eq!(
        a.refusal(false, false),
        Some(Refusal::NotNow(State::Standby))
    );
    assert_eq!(master(3, 1).refusal(false, true), Some(Refusal::NoPeer));
}

#[test]
fn a_link_that_drops_during_a_handover_asked_for_while_hot_does_not_count() {
    let mut a = master(1, 100);
    let mut b = cold(2, 100);
    b.handle(ms(0), Event::Start);
    b.handle(ms(5), Event::Sync { hot: true });
    exchange(&mut a, &mut b, ms(10));
    b.handle(
        ms(20),
        Event::Manual {
            acquire: true,
            force: false,
        },
    );
    assert_eq!(b.state(), State::Waiting);
    // A releases; its role changes and the sync link drops before B
    // takes over.
    exchange(&mut a, &mut b, ms(30));
    b.handle(ms(35), Event::Sync { hot: false });
    exchange(&mut a, &mut b, ms(40));
    assert_eq!((a.state(), b.state()), (State::Standby, State::Master));
    assert_eq!(b.counts.takeovers_without_hot, 0);
}

#[test]
fn a_dead_master_is_taken_over_without_hot_and_that_counts() {
    let mut b = cold(2, 100);
    b.handle(ms(0), Event::Start);
    b.handle(ms(10), Event::Peer(view(State::Master)));
    b.handle(ms(100), Event::PeerDead);
    assert_eq!(b.state(), State::Master);
    assert_eq!(b.counts.takeovers_without_hot, 1);
    // A Hot standby's takeover, and a lone start, do not count.
    let mut h = standby(2, 100);
    h.handle(ms(100), Event::PeerDead);
    assert_eq!(h.state(), State::Master);
    assert_eq!(h.counts.takeovers_without_hot, 0);
    let mut alone = cold(3, 100);
    alone.handle(ms(0), Event::Start);
    alone.handle(HOLD, Event::Timer);
    assert_eq!(alone.state(), State::Master);
    assert_eq!(alone.counts.takeovers_without_hot, 0);
}

#[test]
fn a_dual_mastership_goes_to_the_newer_term_which_announces_again() {
    // A (priority 200) is MASTER; cut off, B (priority 100) takes over
    // with a newer term; healed, A yields to it whatever the priority,
    // and B announces its addresses again.
    let mut a = master(1, 200);
    let mut b = standby(2, 100);
    exchange(&mut a, &mut b, ms(10));
    assert_eq!(a.term(), 1);
    b.handle(ms(100), Event::PeerDead);
    assert_eq!((b.state(), b.term()), (State::Master, 2));
    let out = a.handle(ms(200), Event::Peer(b.view()));
    assert_eq!(out[0], Action::Release);
    assert_eq!(a.state(), State::Standby);
    let out = b.handle(ms(201), Event::Peer(a.view()));
    assert!(out.contains(&Action::Reannounce), "{out:?}");
    assert_eq!(b.state(), State::Master);
    // A frozen master that wakes is the same case: it yields.
    let mut c = master(3, 250);
    let woken = PeerView {
        node_id: 4,
        term: 7,
        ..view(State::Master)
    };
    c.handle(ms(300), Event::Peer(woken));
    assert_eq!(c.state(), State::Standby);
    // Taking over again goes past every term heard.
    c.handle(ms(400), Event::PeerDead);
    assert_eq!((c.state(), c.term()), (State::Master, 8));
}

#[test]
fn every_state_prints_as_the_views_spell_it() {
    let names: Vec<_> = State::ALL.iter().map(ToString::to_string).collect();
    assert_eq!(
        names,
        ["INIT", "WAITING", "MASTER", "STANDBY", "STANDBY-WARNED"]
    );
    for s in State::ALL {
        assert_eq!(State::from_u8(s as u8), Some(s));
    }
    assert_eq!(State::from_u8(5), None);
}

/// One step of the simulated pair.
#[derive(Clone, Debug)]
enum Op {
    Fail(bool, Check, u16),
    Recover(bool, Check, u16),
    Manual(bool, bool, bool),
    /// Cut or heal the link between them.
    Link(bool),
    /// A node's sync link becomes Hot or stops being Hot.
    Sync(bool, bool),
    Wait(u64),
}

fn op() -> impl Strategy<Value = Op> {
    let check = prop_oneof![Just(Check::Link), Just(Check::Probe), Just(Check::Stall)];
    prop_oneof![
        (any::<bool>(), check.clone(), 0..2u16).prop_map(|(n, c, i)| Op::Fail(n, c, i)),
        (any::<bool>(), check, 0..2u16).prop_map(|(n, c, i)| Op::Recover(n, c, i)),
        (any::<bool>(), any::<bool>(), any::<bool>()).prop_map(|(n, a, f)| Op::Manual(n, a, f)),
        any::<bool>().prop_map(Op::Link),
        (any::<bool>(), any::<bool>()).prop_map(|(n, hot)| Op::Sync(n, hot)),
        (1..3000u64).prop_map(Op::Wait),
    ]
}

/// Two FSMs, their timers and the link between them; heartbeats every
/// 50 ms, the peer dead after 150 ms of silence.
struct Sim {
    n: [Fsm; 2],
    timer: [Option<Duration>; 2],
    heard: [Duration; 2],
    dead: [bool; 2],
    up: bool,
    now: Duration,
}

impl Sim {
    fn new(pa: u8, pb: u8) -> Self {
        let mut s = Self {
            n: [node(1, pa), node(2, pb)],
            timer: [None; 2],
            heard: [Duration::ZERO; 2],
            dead: [true; 2],
            up: true,
            now: Duration::ZERO,
        };
        s.event(0, Event::Start);
        s.event(1, Event::Start);
        s
    }

    fn event(&mut self, i: usize, ev: Event) {
        for a in self.n[i].handle(self.now, ev) {
            if let Action::Arm(t) = a {
                self.timer[i] = t;
            }
        }
    }

    fn run(&mut self, d: Duration) {
        let end = self.now + d;
        while self.now < end {
            self.now += ms(50);
            for i in 0..2 {
                if self.timer[i].is_some_and(|t| t <= self.now) {
                    self.timer[i] = None;
                    self.event(i, Event::Timer);
                }
            }
            for i in 0..2 {
                let other = 1 - i;
                if self.up {
                    let v = self.n[other].view();
                    self.heard[i] = self.now;
                    self.dead[i] = false;
                    self.event(i, Event::Peer(v));
                } else if !self.dead[i] && self.now.saturating_sub(self.heard[i]) > ms(150) {
                    self.dead[i] = true;
                    self.event(i, Event::PeerDead);
                }
            }
        }
    }

    fn apply(&mut self, op: &Op) {
        match *op {
            Op::Fail(n, check, id) => self.event(usize::from(n), Event::Failure { check, id }),
            Op::Recover(n, check, id) => self.event(usize::from(n), Event::Recovery { check, id }),
            Op::Manual(n, acquire, force) => {
                self.event(usize::from(n), Event::Manual { acquire, force });
            }
            Op::Link(up) => self.up = up,
            Op::Sync(n, hot) => self.event(usize::from(n), Event::Sync { hot }),
            Op::Wait(t) => self.run(ms(t)),
        }
        self.run(ms(50));
    }

    fn masters(&self) -> usize {
        self.n.iter().filter(|f| f.state() == State::Master).count()
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    /// Whatever happens, once the link is up and things have had time to
    /// settle there is never more than one MASTER, and there is one
    /// whenever either node is healthy.
    #[test]
    fn a_pair_settles_to_one_master(
        pa in 1..=3u8,
        pb in 1..=3u8,
        ops in proptest::collection::vec(op(), 0..40),
    ) {
        let mut sim = Sim::new(pa, pb);
        for op in &ops {
            sim.apply(op);
            if sim.up {
                prop_assert!(sim.masters() <= 1, "dual master with the link up after {op:?}");
            }
        }
        sim.up = true;
        // Longer than any hold-down: every request and startup ends.
        sim.run(ms(2500));
        prop_assert!(sim.masters() <= 1);
        if sim.n.iter().any(Fsm::healthy) {
            prop_assert_eq!(
                sim.masters(), 1,
                "no master: {:?} / {:?}", sim.n[0].view(), sim.n[1].view()
            );
        }
    }
}
