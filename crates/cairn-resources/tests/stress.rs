//! Real threads against the scheduler: limits are never exceeded, every task runs, sequential mode
//! keeps one task per job, and the rate split holds when measured.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Barrier};
use std::thread;
use std::time::{Duration, Instant};

use cairn_resources::{Direction, Lease, RepositoryLimits, ResourceScheduler, SchedulerOptions, TaskRequest};
use proptest::prelude::*;

/// Running tasks per resource, counted by the tasks themselves while they hold their lease.
struct Counter {
    limit: usize,
    now: AtomicUsize,
    peak: AtomicUsize,
}

impl Counter {
    fn new(limit: usize) -> Arc<Self> {
        Arc::new(Self {
            limit,
            now: AtomicUsize::new(0),
            peak: AtomicUsize::new(0),
        })
    }

    fn enter(&self) {
        let n = self.now.fetch_add(1, Ordering::SeqCst) + 1;
        self.peak.fetch_max(n, Ordering::SeqCst);
        assert!(n <= self.limit, "{n} tasks running with a maximum of {}", self.limit);
    }

    fn leave(&self) {
        self.now.fetch_sub(1, Ordering::SeqCst);
    }
}

#[derive(Debug, Clone)]
struct Plan {
    proxy_limits: Vec<usize>,
    repo_limits: Vec<usize>,
    /// (job, allowed proxies, repository) per task.
    tasks: Vec<(usize, Vec<usize>, usize)>,
    parallel: bool,
    max_overtakes: u32,
}

fn plan() -> impl Strategy<Value = Plan> {
    (
        prop::collection::vec(1usize..4, 1..4),
        prop::collection::vec(1usize..4, 1..4),
        any::<bool>(),
        0u32..4,
    )
        .prop_flat_map(|(proxy_limits, repo_limits, parallel, max_overtakes)| {
            let np = proxy_limits.len();
            let nr = repo_limits.len();
            let task = (0usize..4, prop::collection::vec(0..np, 1..=np), 0..nr);
            prop::collection::vec(task, 1..24).prop_map(move |tasks| Plan {
                proxy_limits: proxy_limits.clone(),
                repo_limits: repo_limits.clone(),
                tasks,
                parallel,
                max_overtakes,
            })
        })
}

fn run(plan: &Plan) {
    let s = ResourceScheduler::new(SchedulerOptions {
        parallel_processing: plan.parallel,
        max_overtakes: plan.max_overtakes,
    });
    let mut counters: HashMap<String, Arc<Counter>> = HashMap::new();
    for (i, &n) in plan.proxy_limits.iter().enumerate() {
        s.set_proxy(format!("p{i}"), n).expect("valid");
        counters.insert(format!("p{i}"), Counter::new(n));
    }
    for (i, &n) in plan.repo_limits.iter().enumerate() {
        s.set_repository(
            format!("r{i}"),
            RepositoryLimits {
                max_tasks: n,
                read_limit: None,
                write_limit: None,
            },
        )
        .expect("valid");
        counters.insert(format!("r{i}"), Counter::new(n));
    }
    let job_limit = if plan.parallel { usize::MAX } else { 1 };
    for j in 0..4 {
        counters.insert(format!("j{j}"), Counter::new(job_limit));
    }
    let counters = Arc::new(counters);
    let done = Arc::new(AtomicUsize::new(0));
    let handles: Vec<_> = plan
        .tasks
        .iter()
        .enumerate()
        .map(|(i, (job, proxies, repo))| {
            let request = TaskRequest::new(format!("j{job}"), "unused", format!("r{repo}"))
                .with_proxies(proxies.iter().map(|p| format!("p{p}")));
            let (s, counters, done) = (s.clone(), counters.clone(), done.clone());
            thread::spawn(move || {
                // Mix the three ways of waiting.
                let lease = match i % 3 {
                    0 => s.acquire(&request).expect("known resources"),
                    1 => loop {
                        if let Some(lease) = s.acquire_timeout(&request, Duration::from_millis(1)).expect("known") {
                            break lease;
                        }
                    },
                    _ => loop {
                        if let Some(lease) = s.try_acquire(&request).expect("known") {
                            break lease;
                        }
                        thread::sleep(Duration::from_micros(200));
                    },
                };
                assert!(
                    request.proxies.contains(lease.proxy()),
                    "granted a proxy the task did not allow"
                );
                let mine = [
                    lease.proxy().to_string(),
                    lease.repository().to_string(),
                    lease.job().to_string(),
                ];
                mine.iter().for_each(|k| counters[k].enter());
                thread::sleep(Duration::from_micros(300));
                mine.iter().for_each(|k| counters[k].leave());
                drop(lease);
                done.fetch_add(1, Ordering::SeqCst);
            })
        })
        .collect();
    for h in handles {
        h.join().expect("task thread panicked (a limit was exceeded?)");
    }
    assert_eq!(done.load(Ordering::SeqCst), plan.tasks.len(), "every task runs");
    assert_eq!(s.waiting(), 0);
    for i in 0..plan.proxy_limits.len() {
        assert_eq!(s.proxy_load(&format!("p{i}").into()).map(|l| l.running), Some(0));
    }
    if !plan.parallel {
        for j in 0..4 {
            assert!(counters[&format!("j{j}")].peak.load(Ordering::SeqCst) <= 1);
        }
    }
}

/// One step of [`rate_shares_follow_each_direction`]: start a reader or a writer, end the
/// `n`-th running task, or change the read or the write limit.
#[derive(Debug, Clone)]
enum Step {
    Start(Direction),
    End(usize),
    SetRead(Option<u64>),
    SetWrite(Option<u64>),
}

fn direction() -> impl Strategy<Value = Direction> {
    prop_oneof![Just(Direction::Read), Just(Direction::Write)]
}

fn limit() -> impl Strategy<Value = Option<u64>> {
    prop::option::of(1u64..100_000_000)
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        3 => direction().prop_map(Step::Start),
        2 => any::<usize>().prop_map(Step::End),
        1 => limit().prop_map(Step::SetRead),
        1 => limit().prop_map(Step::SetWrite),
    ]
}

/// The share every running task of `direction` must have.
fn expected_share(limit: Option<u64>, tasks: usize) -> Option<u64> {
    limit.map(|l| (l / tasks.max(1) as u64).max(1))
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    #[test]
    fn limits_hold_and_every_task_runs(plan in plan()) {
        run(&plan);
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

    /// After every start, end and limit change, each running task's rate is its direction's limit
    /// split among that direction's running tasks only, and the scheduler reports the same.
    #[test]
    fn rate_shares_follow_each_direction(
        read in limit(),
        write in limit(),
        steps in prop::collection::vec(step(), 1..40),
    ) {
        let s = ResourceScheduler::new(SchedulerOptions::default());
        s.set_proxy("p", 64).expect("valid");
        let (mut read, mut write) = (read, write);
        let set = |read, write| {
            s.set_repository("r", RepositoryLimits { max_tasks: 64, read_limit: read, write_limit: write })
                .expect("valid");
        };
        set(read, write);
        let mut running: Vec<Lease> = Vec::new();
        for step in steps {
            match step {
                Step::Start(d) => {
                    let lease = s
                        .try_acquire(&TaskRequest::new("j", "p", "r").with_direction(d))
                        .expect("known")
                        .expect("a free slot");
                    running.push(lease);
                }
                Step::End(n) => {
                    if !running.is_empty() {
                        running.remove(n % running.len());
                    }
                }
                Step::SetRead(l) => {
                    read = l;
                    set(read, write);
                }
                Step::SetWrite(l) => {
                    write = l;
                    set(read, write);
                }
            }
            for (d, limit) in [(Direction::Read, read), (Direction::Write, write)] {
                let tasks = running.iter().filter(|l| l.direction() == d).count();
                let share = expected_share(limit, tasks);
                for lease in running.iter().filter(|l| l.direction() == d) {
                    prop_assert_eq!(lease.rate_limiter().rate(), share, "{:?} with {} tasks", d, tasks);
                }
                let usage = s.repository_rate(&"r".into(), d).expect("known");
                prop_assert_eq!((usage.tasks, usage.limit, usage.share), (tasks, limit, share));
            }
        }
    }
}

#[test]
fn many_tasks_on_one_pair_reach_but_never_pass_the_limit() {
    let plan = Plan {
        proxy_limits: vec![3],
        repo_limits: vec![2],
        tasks: (0..60).map(|i| (i % 4, vec![0], 0)).collect(),
        parallel: true,
        max_overtakes: 8,
    };
    run(&plan);
}

#[test]
fn limits_edited_while_tasks_run_never_lose_a_task() {
    let s = ResourceScheduler::new(SchedulerOptions::default());
    s.set_proxy("p", 2).expect("valid");
    s.set_repository(
        "r",
        RepositoryLimits {
            max_tasks: 2,
            read_limit: None,
            write_limit: None,
        },
    )
    .expect("valid");
    let stop = Arc::new(AtomicUsize::new(0));
    let editor = {
        let (s, stop) = (s.clone(), stop.clone());
        thread::spawn(move || {
            let mut i = 0usize;
            while stop.load(Ordering::SeqCst) == 0 {
                i += 1;
                s.set_proxy("p", 1 + i % 3).expect("valid");
                s.set_parallel_processing(i.is_multiple_of(2));
                thread::sleep(Duration::from_micros(500));
            }
        })
    };
    let workers: Vec<_> = (0..32)
        .map(|i| {
            let s = s.clone();
            thread::spawn(move || {
                let lease = s
                    .acquire(&TaskRequest::new(format!("j{}", i % 3), "p", "r"))
                    .expect("known");
                thread::sleep(Duration::from_micros(200));
                drop(lease);
            })
        })
        .collect();
    for w in workers {
        w.join().expect("worker");
    }
    stop.store(1, Ordering::SeqCst);
    editor.join().expect("editor");
    assert_eq!(s.waiting(), 0);
    assert_eq!(s.proxy_load(&"p".into()).map(|l| l.running), Some(0));
}

/// Bytes each of `n` tasks of `direction` moves in about half a second under a shared limit of
/// that direction, while as many tasks of the other direction run unlimited beside them.
fn measure_split(limit: u64, n: usize, direction: Direction) -> (Vec<u64>, Duration) {
    let s = ResourceScheduler::new(SchedulerOptions::default());
    s.set_proxy("p", 16).expect("valid");
    let (read_limit, write_limit) = match direction {
        Direction::Read => (Some(limit), None),
        Direction::Write => (None, Some(limit)),
    };
    s.set_repository(
        "r",
        RepositoryLimits {
            max_tasks: 16,
            read_limit,
            write_limit,
        },
    )
    .expect("valid");
    let other = match direction {
        Direction::Read => Direction::Write,
        Direction::Write => Direction::Read,
    };
    let others: Vec<_> = (0..n)
        .map(|_| {
            s.acquire(&TaskRequest::new("j", "p", "r").with_direction(other))
                .expect("free")
        })
        .collect();
    for lease in &others {
        assert_eq!(lease.rate_limiter().rate(), None, "the other direction is not limited");
    }
    let leases: Vec<_> = (0..n)
        .map(|_| {
            s.acquire(&TaskRequest::new("j", "p", "r").with_direction(direction))
                .expect("free")
        })
        .collect();
    let start = Arc::new(Barrier::new(n));
    let run_for = Duration::from_millis(500);
    let handles: Vec<_> = leases
        .into_iter()
        .map(|lease| {
            let start = start.clone();
            thread::spawn(move || {
                start.wait();
                let begun = Instant::now();
                let mut bytes = 0u64;
                while begun.elapsed() < run_for {
                    lease.throttle(16 * 1024);
                    bytes += 16 * 1024;
                }
                (bytes, begun.elapsed())
            })
        })
        .collect();
    let results: Vec<(u64, Duration)> = handles.into_iter().map(|h| h.join().expect("mover")).collect();
    let elapsed = results.iter().map(|r| r.1).max().unwrap_or_default();
    (results.into_iter().map(|r| r.0).collect(), elapsed)
}

#[test]
fn measured_rate_is_the_equal_share() {
    let limit = 4_000_000u64;
    for (n, direction) in [
        (1usize, Direction::Write),
        (2, Direction::Read),
        (4, Direction::Write),
        (4, Direction::Read),
    ] {
        let (bytes, elapsed) = measure_split(limit, n, direction);
        let share = limit as f64 / n as f64;
        let expected = share * elapsed.as_secs_f64();
        for b in &bytes {
            let b = *b as f64;
            // Pacing can only make a task slower than its share (a loaded machine), never faster
            // beyond one chunk of slack; the lower bound is wide on purpose.
            assert!(
                b <= expected * 1.1 + 16.0 * 1024.0,
                "n={n} {direction:?}: {b} bytes, share allows {expected:.0}"
            );
            assert!(
                b >= expected * 0.3,
                "n={n} {direction:?}: {b} bytes, share allows {expected:.0}"
            );
        }
        let total: u64 = bytes.iter().sum();
        assert!(total as f64 <= limit as f64 * elapsed.as_secs_f64() * 1.1 + (n as f64) * 16.0 * 1024.0);
    }
}
