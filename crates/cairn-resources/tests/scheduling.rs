//! Deterministic behaviour of the scheduler: futures are polled by hand, no timing involved.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};

use cairn_resources::{
    Acquire, Direction, JobId, Lease, ProxyId, RateUsage, RepositoryId, RepositoryLimits, ResourceError,
    ResourceScheduler, SchedulerOptions, TaskRequest,
};

fn poll(future: &mut Acquire) -> Option<Result<Lease, ResourceError>> {
    match Pin::new(future).poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(result) => Some(result),
        Poll::Pending => None,
    }
}

fn repo(max_tasks: usize) -> RepositoryLimits {
    RepositoryLimits {
        max_tasks,
        read_limit: None,
        write_limit: None,
    }
}

fn limits(max_tasks: usize, read_limit: Option<u64>, write_limit: Option<u64>) -> RepositoryLimits {
    RepositoryLimits {
        max_tasks,
        read_limit,
        write_limit,
    }
}

fn scheduler(options: SchedulerOptions) -> ResourceScheduler {
    let s = ResourceScheduler::new(options);
    for (p, n) in [("p1", 1), ("p2", 2)] {
        s.set_proxy(p, n).expect("valid limit");
    }
    for (r, n) in [("r1", 1), ("r2", 2)] {
        s.set_repository(r, repo(n)).expect("valid limit");
    }
    s
}

#[test]
fn task_needs_both_slots_and_frees_both() {
    let s = scheduler(SchedulerOptions::default());
    let a = s
        .try_acquire(&TaskRequest::new("j", "p2", "r1"))
        .expect("known")
        .expect("free");
    // r1 is full although p2 has room; p1 is free but r1 is not.
    assert!(
        s.try_acquire(&TaskRequest::new("j", "p2", "r1"))
            .expect("known")
            .is_none()
    );
    assert!(
        s.try_acquire(&TaskRequest::new("j", "p1", "r1"))
            .expect("known")
            .is_none()
    );
    // The failed attempts left nothing behind.
    assert_eq!(s.waiting(), 0);
    assert_eq!(s.proxy_load(&"p1".into()).map(|l| l.running), Some(0));
    assert_eq!(s.proxy_load(&"p2".into()).map(|l| l.running), Some(1));
    drop(a);
    assert_eq!(s.proxy_load(&"p2".into()).map(|l| l.running), Some(0));
    assert_eq!(s.repository_load(&"r1".into()).map(|l| l.running), Some(0));
    assert_eq!(s.job_running(&"j".into()), 0);
    assert!(
        s.try_acquire(&TaskRequest::new("j", "p1", "r1"))
            .expect("known")
            .is_some()
    );
}

#[test]
fn bad_requests_and_limits_are_refused() {
    let s = scheduler(SchedulerOptions::default());
    assert_eq!(s.set_proxy("p", 0), Err(ResourceError::ZeroTaskLimit));
    assert_eq!(s.set_repository("r", repo(0)), Err(ResourceError::ZeroTaskLimit));
    for zero_rate in [
        limits(1, Some(0), None),
        limits(1, None, Some(0)),
        limits(1, Some(0), Some(0)),
    ] {
        assert_eq!(s.set_repository("r", zero_rate), Err(ResourceError::ZeroRateLimit));
    }
    assert_eq!(
        s.repository_load(&"r".into()),
        None,
        "a refused repository is not added"
    );
    let err = s.acquire(&TaskRequest::new("j", "p1", "nope")).map(|_| ()).unwrap_err();
    assert_eq!(err, ResourceError::UnknownRepository(RepositoryId::from("nope")));
    let err = s.acquire(&TaskRequest::new("j", "nope", "r1")).map(|_| ()).unwrap_err();
    assert_eq!(err, ResourceError::UnknownProxy(ProxyId::from("nope")));
    let none: [&str; 0] = [];
    let err = s
        .acquire(&TaskRequest::new("j", "p1", "r1").with_proxies(none))
        .map(|_| ())
        .unwrap_err();
    assert_eq!(err, ResourceError::NoProxy);
    // Unknown candidates are skipped when a known one is listed.
    let lease = s
        .acquire(&TaskRequest::new("j", "p1", "r1").with_proxies(["gone", "p1"]))
        .expect("p1 known");
    assert_eq!(lease.proxy().as_str(), "p1");
}

#[test]
fn waiters_on_one_pair_start_in_arrival_order() {
    let s = scheduler(SchedulerOptions::default());
    let task = TaskRequest::new("j", "p1", "r1");
    let mut running = s.try_acquire(&task).expect("known").expect("free");
    let mut waiting: Vec<Acquire> = (0..4).map(|_| s.acquire_async(task.clone())).collect();
    for w in &mut waiting {
        assert!(poll(w).is_none());
    }
    for i in 0..4 {
        drop(running);
        running = poll(&mut waiting[i]).expect("oldest waiter is granted").expect("known");
        for later in &mut waiting[i + 1..] {
            assert!(poll(later).is_none(), "a younger waiter started before an older one");
        }
    }
}

#[test]
fn a_blocked_task_does_not_block_a_later_one_that_can_start() {
    let s = scheduler(SchedulerOptions::default());
    let _full = s.acquire(&TaskRequest::new("a", "p2", "r1")).expect("free");
    let mut blocked = s.acquire_async(TaskRequest::new("b", "p2", "r1"));
    assert!(poll(&mut blocked).is_none());
    let other_repo = s.try_acquire(&TaskRequest::new("c", "p2", "r2")).expect("known");
    assert!(
        other_repo.is_some(),
        "a task for another repository must not wait behind r1"
    );
}

#[test]
fn overtaking_is_bounded_then_resources_are_held() {
    let s = scheduler(SchedulerOptions {
        parallel_processing: true,
        max_overtakes: 2,
    });
    s.set_repository("r", repo(10)).expect("valid");
    let p1_busy = s.acquire(&TaskRequest::new("x", "p1", "r2")).expect("free");
    // Older task wants p1 (busy) and r; younger tasks on p2 share r.
    let mut old = s.acquire_async(TaskRequest::new("old", "p1", "r"));
    assert!(poll(&mut old).is_none());
    let young = TaskRequest::new("young", "p2", "r");
    let y1 = s.try_acquire(&young).expect("known");
    let y2 = s.try_acquire(&young).expect("known");
    assert!(y1.is_some() && y2.is_some(), "first overtakes are allowed");
    drop(y1);
    // Overtaken twice: r is now held back for the old task although r and p2 have room.
    assert!(s.try_acquire(&young).expect("known").is_none());
    drop(p1_busy);
    let old = poll(&mut old).expect("old task starts when p1 frees").expect("known");
    assert_eq!(old.proxy().as_str(), "p1");
    assert!(
        s.try_acquire(&young).expect("known").is_some(),
        "hold ends once the old task started"
    );
}

#[test]
fn strict_fifo_with_zero_overtakes() {
    let s = scheduler(SchedulerOptions {
        parallel_processing: true,
        max_overtakes: 0,
    });
    let _p1_busy = s.acquire(&TaskRequest::new("x", "p1", "r2")).expect("free");
    let mut old = s.acquire_async(TaskRequest::new("old", "p1", "r2"));
    assert!(poll(&mut old).is_none());
    assert!(
        s.try_acquire(&TaskRequest::new("y", "p2", "r2"))
            .expect("known")
            .is_none()
    );
    // Resources the old task does not want stay usable.
    assert!(
        s.try_acquire(&TaskRequest::new("y", "p2", "r1"))
            .expect("known")
            .is_some()
    );
}

#[test]
fn sequential_mode_runs_one_task_per_job() {
    let s = scheduler(SchedulerOptions {
        parallel_processing: false,
        max_overtakes: 8,
    });
    s.set_proxy("big", 8).expect("valid");
    s.set_repository("big", repo(8)).expect("valid");
    let t = |job: &str| TaskRequest::new(job, "big", "big");
    let a1 = s.try_acquire(&t("a")).expect("known").expect("free");
    assert!(
        s.try_acquire(&t("a")).expect("known").is_none(),
        "second task of job a must wait"
    );
    let b1 = s.try_acquire(&t("b")).expect("known");
    assert!(b1.is_some(), "another job runs side by side");
    let mut a2 = s.acquire_async(t("a"));
    assert!(poll(&mut a2).is_none());
    drop(a1);
    let _a2 = poll(&mut a2).expect("job a's turn").expect("known");
    assert_eq!(s.job_running(&JobId::from("a")), 1);
    // Switching parallel processing on lets the job's next task start at once.
    s.set_parallel_processing(true);
    assert!(s.try_acquire(&t("a")).expect("known").is_some());
}

#[test]
fn lowered_limit_keeps_running_tasks_and_stops_new_ones() {
    let s = scheduler(SchedulerOptions::default());
    s.set_proxy("p", 3).expect("valid");
    s.set_repository("r", repo(3)).expect("valid");
    let t = TaskRequest::new("j", "p", "r");
    let leases: Vec<Lease> = (0..3).map(|_| s.acquire(&t).expect("free")).collect();
    s.set_proxy("p", 1).expect("valid");
    assert_eq!(
        s.proxy_load(&"p".into()).map(|l| (l.running, l.max_tasks)),
        Some((3, 1))
    );
    let mut next = s.acquire_async(t.clone());
    assert!(poll(&mut next).is_none());
    let mut leases = leases.into_iter();
    drop(leases.next());
    drop(leases.next());
    assert!(poll(&mut next).is_none(), "still at the lowered maximum");
    drop(leases.next());
    let lease = poll(&mut next).expect("below the maximum now").expect("known");
    // Raising the limit starts waiters at once.
    let mut more = s.acquire_async(t.clone());
    assert!(poll(&mut more).is_none());
    s.set_proxy("p", 2).expect("valid");
    assert!(poll(&mut more).is_some());
    drop(lease);
}

#[test]
fn removal_fails_waiters_and_spares_running_tasks() {
    let s = scheduler(SchedulerOptions::default());
    let running = s.acquire(&TaskRequest::new("j", "p1", "r1")).expect("free");
    let mut waiter = s.acquire_async(TaskRequest::new("j", "p1", "r1"));
    assert!(poll(&mut waiter).is_none());
    assert!(s.remove_proxy(&"p1".into()));
    let err = poll(&mut waiter).expect("decided").map(|_| ()).unwrap_err();
    assert_eq!(err, ResourceError::UnknownProxy("p1".into()));
    // Re-adding the proxy gives fresh counters; the old lease must not free a slot of the new one.
    s.set_proxy("p1", 1).expect("valid");
    s.set_repository("r9", repo(1)).expect("valid");
    let fresh = s.acquire(&TaskRequest::new("k", "p1", "r9")).expect("free");
    drop(running);
    assert_eq!(s.proxy_load(&"p1".into()).map(|l| l.running), Some(1));
    drop(fresh);
    assert!(s.remove_repository(&"r9".into()));
    assert!(!s.remove_repository(&"r9".into()));
}

#[test]
fn dropped_futures_withdraw_and_return_undelivered_grants() {
    let s = scheduler(SchedulerOptions::default());
    let t = TaskRequest::new("j", "p1", "r1");
    let running = s.acquire(&t).expect("free");
    let mut pending = s.acquire_async(t.clone());
    assert!(poll(&mut pending).is_none());
    assert_eq!(s.waiting(), 1);
    drop(running); // grants `pending`, which never picks it up
    assert_eq!(s.proxy_load(&"p1".into()).map(|l| l.running), Some(1));
    drop(pending);
    assert_eq!(s.proxy_load(&"p1".into()).map(|l| l.running), Some(0));
    assert_eq!(s.waiting(), 0);
    assert!(s.try_acquire(&t).expect("known").is_some());
}

#[test]
fn proxy_choice_prefers_least_loaded_with_deterministic_ties() {
    let s = scheduler(SchedulerOptions::default());
    s.set_proxy("a", 2).expect("valid");
    s.set_proxy("b", 4).expect("valid");
    s.set_repository("r", repo(16)).expect("valid");
    let cands: Vec<ProxyId> = vec!["a".into(), "b".into()];
    // Equal utilisation (0): b has more free slots.
    assert_eq!(s.pick_proxy(&cands), Some("b".into()));
    let t = TaskRequest::new("j", "a", "r").with_proxies(["a", "b"]);
    let picks: Vec<String> = (0..6)
        .map(|_| s.acquire(&t).expect("free"))
        .map(|l| {
            let p = l.proxy().to_string();
            std::mem::forget(l); // keep the slot taken for the next pick
            p
        })
        .collect();
    // Lowest utilisation wins; 0/2 vs 0/4 and 1/2 vs 2/4 tie and go to the proxy with more free slots.
    assert_eq!(picks, ["b", "a", "b", "b", "a", "b"]);
    assert_eq!(s.pick_proxy(&cands), None);
    assert!(s.try_acquire(&t).expect("known").is_none());
}

#[test]
fn rate_is_split_per_direction_and_resplit() {
    let s = scheduler(SchedulerOptions::default());
    s.set_proxy("p", 8).expect("valid");
    s.set_repository("r", limits(8, Some(6_000_000), Some(8_000_000)))
        .expect("valid");
    let w = TaskRequest::new("j", "p", "r");
    let r = w.clone().with_direction(Direction::Read);
    let w1 = s.acquire(&w).expect("free");
    assert_eq!(w1.rate_limiter().rate(), Some(8_000_000));
    let w2 = s.acquire(&w).expect("free");
    assert_eq!(w1.rate_limiter().rate(), Some(4_000_000));
    assert_eq!(w2.rate_limiter().rate(), Some(4_000_000));
    let r1 = s.acquire(&r).expect("free");
    assert_eq!(r1.direction(), Direction::Read);
    assert_eq!(
        r1.rate_limiter().rate(),
        Some(6_000_000),
        "readers have their own budget: the read limit"
    );
    let r2 = s.acquire(&r).expect("free");
    assert_eq!(r1.rate_limiter().rate(), Some(3_000_000));
    assert_eq!(r2.rate_limiter().rate(), Some(3_000_000));
    assert_eq!(w1.rate_limiter().rate(), Some(4_000_000), "readers do not slow writers");
    let rate = |d| s.repository_rate(&"r".into(), d).expect("known");
    assert_eq!(
        rate(Direction::Read),
        RateUsage {
            tasks: 2,
            limit: Some(6_000_000),
            share: Some(3_000_000)
        }
    );
    assert_eq!(
        rate(Direction::Write),
        RateUsage {
            tasks: 2,
            limit: Some(8_000_000),
            share: Some(4_000_000)
        }
    );
    drop(w2);
    assert_eq!(w1.rate_limiter().rate(), Some(8_000_000));
    assert_eq!(
        r1.rate_limiter().rate(),
        Some(3_000_000),
        "writers do not change the read share"
    );
    // Editing one limit leaves the other direction alone.
    s.set_repository("r", limits(8, Some(6_000_000), Some(2_000_000)))
        .expect("valid");
    assert_eq!(w1.rate_limiter().rate(), Some(2_000_000));
    assert_eq!(r2.rate_limiter().rate(), Some(3_000_000));
    s.set_repository("r", limits(8, Some(1_000_000), Some(2_000_000)))
        .expect("valid");
    assert_eq!(r2.rate_limiter().rate(), Some(500_000));
    assert_eq!(w1.rate_limiter().rate(), Some(2_000_000));
    s.set_repository("r", limits(8, None, Some(2_000_000))).expect("valid");
    assert_eq!(r1.rate_limiter().rate(), None);
    assert_eq!(r1.rate_limiter().delay_for(u64::MAX), std::time::Duration::ZERO);
    assert_eq!(w1.rate_limiter().rate(), Some(2_000_000));
    s.set_repository("r", limits(8, None, None)).expect("valid");
    assert_eq!(w1.rate_limiter().rate(), None);
    assert_eq!(w1.rate_limiter().delay_for(u64::MAX), std::time::Duration::ZERO);
    assert_eq!(rate(Direction::Write).limit, None);
    assert_eq!(s.repository_rate(&"nope".into(), Direction::Read), None);
}

#[test]
fn a_read_limit_does_not_slow_writers_and_a_write_limit_not_readers() {
    let s = scheduler(SchedulerOptions::default());
    s.set_proxy("p", 8).expect("valid");
    // Only reads limited: a writer never waits, a reader does.
    s.set_repository("r", limits(8, Some(1_000), None)).expect("valid");
    let writer = s.acquire(&TaskRequest::new("j", "p", "r")).expect("free");
    let reader = s
        .acquire(&TaskRequest::new("j", "p", "r").with_direction(Direction::Read))
        .expect("free");
    assert_eq!(writer.rate_limiter().rate(), None);
    assert_eq!(writer.rate_limiter().delay_for(1 << 40), std::time::Duration::ZERO);
    assert_eq!(reader.rate_limiter().rate(), Some(1_000));
    assert!(reader.rate_limiter().delay_for(10_000) >= std::time::Duration::from_secs(9));
    drop((writer, reader));
    // Only writes limited: the other way round.
    s.set_repository("r", limits(8, None, Some(1_000))).expect("valid");
    let writer = s.acquire(&TaskRequest::new("j", "p", "r")).expect("free");
    let reader = s
        .acquire(&TaskRequest::new("j", "p", "r").with_direction(Direction::Read))
        .expect("free");
    assert_eq!(reader.rate_limiter().rate(), None);
    assert_eq!(reader.rate_limiter().delay_for(1 << 40), std::time::Duration::ZERO);
    assert_eq!(writer.rate_limiter().rate(), Some(1_000));
    assert!(writer.rate_limiter().delay_for(10_000) >= std::time::Duration::from_secs(9));
}

#[test]
fn handles_are_send_and_sync() {
    fn check<T: Send + Sync>() {}
    check::<ResourceScheduler>();
    check::<Lease>();
    check::<Acquire>();
    check::<cairn_resources::RateLimiter>();
}
