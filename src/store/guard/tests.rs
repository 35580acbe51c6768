//! The breaker, the probe and the timeouts of [`Guarded`](super::Guarded), in virtual time.

use super::breaker::MIN_GAP;
use super::probe::Next;
use super::*;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use tokio::time::Instant;

/// A store whose calls and pings fail, hang or succeed, as told; counts its calls and its
/// pings apart.
#[derive(Default)]
struct Flaky {
    fail: AtomicBool,
    hang: AtomicBool,
    calls: AtomicUsize,
    pings: AtomicUsize,
}

impl Flaky {
    fn answer(&self) -> StoreFuture<()> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        self.outcome()
    }

    fn outcome(&self) -> StoreFuture<()> {
        if self.hang.load(Ordering::SeqCst) {
            Box::pin(std::future::pending())
        } else if self.fail.load(Ordering::SeqCst) {
            Box::pin(std::future::ready(Err(StoreError::new("down"))))
        } else {
            Box::pin(std::future::ready(Ok(())))
        }
    }
}

impl Store for Flaky {
    fn get(&self, _: Arc<str>) -> StoreFuture<Option<Arc<Entry>>> {
        let f = self.answer();
        Box::pin(async move { f.await.map(|()| None) })
    }
    fn put(&self, _: Arc<str>, _: Arc<Entry>, _: Duration) -> StoreFuture<()> {
        self.answer()
    }
    fn delete(&self, _: Arc<str>) -> StoreFuture<()> {
        self.answer()
    }
    fn health_check(&self) -> Option<&dyn HealthCheck> {
        Some(self)
    }
}

impl HealthCheck for Flaky {
    fn ping(&self) -> StoreFuture<()> {
        self.pings.fetch_add(1, Ordering::SeqCst);
        self.outcome()
    }
}

/// A guard whose breaker only calls move (no background probe).
fn guarded() -> (Guarded<Flaky>, Guarded<Flaky>) {
    let g = Guarded::new(Flaky::default())
        .timeout(Duration::from_millis(10))
        .failures(3)
        .cool_down(Duration::from_secs(1))
        .probe_interval(Duration::ZERO);
    (g.clone(), g)
}

fn pings(g: &Guarded<Flaky>) -> usize {
    g.get_ref().pings.load(Ordering::SeqCst)
}

fn set_down(g: &Guarded<Flaky>, down: bool) {
    g.get_ref().fail.store(down, Ordering::SeqCst);
}

/// Moves paused time on in 1 ms steps (the probe runs between them) until `cond` holds,
/// and says how long that took; fails the test past `limit`. Timers fire on whole
/// milliseconds, rounded up: each wait of the probe can take a millisecond more.
async fn virtual_time_until(what: &str, limit: Duration, cond: impl Fn() -> bool) -> Duration {
    let started = Instant::now();
    while !cond() {
        let took = started.elapsed();
        assert!(took <= limit, "{what}: not within {limit:?}");
        tokio::time::advance(Duration::from_millis(1)).await;
    }
    started.elapsed()
}

fn calls(g: &Guarded<Flaky>) -> usize {
    g.get_ref().calls.load(Ordering::SeqCst)
}

#[tokio::test(start_paused = true)]
async fn opens_after_failures_probes_after_cool_down_and_closes() {
    let (g, watch) = guarded();
    g.get_ref().fail.store(true, Ordering::SeqCst);
    for _ in 0..3 {
        assert!(g.delete("k".into()).await.is_err());
    }
    assert_eq!(watch.health(), Health::Degraded);
    assert_eq!(calls(&g), 3);
    // Open: fails at once, the store is not called.
    let started = Instant::now();
    for _ in 0..10 {
        assert!(g.get("k".into()).await.is_err());
    }
    assert_eq!(started.elapsed(), Duration::ZERO);
    assert_eq!(calls(&g), 3);
    // After the cool-down one probe goes through; it fails: open again.
    tokio::time::advance(Duration::from_secs(1)).await;
    assert!(g.get("k".into()).await.is_err());
    assert_eq!(calls(&g), 4);
    assert!(g.get("k".into()).await.is_err());
    assert_eq!(calls(&g), 4);
    // The store is back: the next probe closes the breaker.
    g.get_ref().fail.store(false, Ordering::SeqCst);
    tokio::time::advance(Duration::from_secs(1)).await;
    assert!(g.get("k".into()).await.is_ok());
    assert_eq!(watch.health(), Health::Ok);
    assert!(g
        .put("k".into(), entry(), Duration::from_secs(1))
        .await
        .is_ok());
    assert_eq!(calls(&g), 6);
}

#[tokio::test(start_paused = true)]
async fn timeouts_count_as_failures_and_bound_each_call() {
    let (g, _) = guarded();
    g.get_ref().hang.store(true, Ordering::SeqCst);
    for _ in 0..3 {
        let started = Instant::now();
        let err = g.get("k".into()).await.unwrap_err();
        assert_eq!(started.elapsed(), Duration::from_millis(10));
        assert!(err.to_string().contains("no answer within"), "{err}");
    }
    assert_eq!(g.health(), Health::Degraded);
}

#[tokio::test(start_paused = true)]
async fn a_success_resets_the_count_of_failures() {
    let (g, _) = guarded();
    for _ in 0..5 {
        g.get_ref().fail.store(true, Ordering::SeqCst);
        assert!(g.delete("k".into()).await.is_err());
        assert!(g.delete("k".into()).await.is_err());
        g.get_ref().fail.store(false, Ordering::SeqCst);
        assert!(g.delete("k".into()).await.is_ok());
    }
    assert_eq!(g.health(), Health::Ok);
}

#[tokio::test(start_paused = true)]
async fn only_one_probe_at_a_time_and_a_dropped_probe_frees_the_slot() {
    let (g, _) = guarded();
    g.get_ref().fail.store(true, Ordering::SeqCst);
    for _ in 0..3 {
        let _ = g.delete("k".into()).await;
    }
    tokio::time::advance(Duration::from_secs(1)).await;
    g.get_ref().hang.store(true, Ordering::SeqCst);
    let probe = g.get("k".into());
    // The probe was admitted; another call meanwhile fails at once.
    assert!(g.get("k".into()).await.is_err());
    assert_eq!(calls(&g), 4);
    drop(probe);
    // The next call probes at once.
    g.get_ref().hang.store(false, Ordering::SeqCst);
    g.get_ref().fail.store(false, Ordering::SeqCst);
    assert!(g.get("k".into()).await.is_ok());
    assert_eq!(g.health(), Health::Ok);
}

/// `took` is `expected`, give or take the timers' rounding.
fn around(took: Duration, expected: Duration) -> bool {
    took >= expected && took <= expected + Duration::from_millis(10)
}

#[tokio::test(start_paused = true)]
async fn an_idle_store_is_degraded_within_2_s_of_dying_and_ok_within_3_s_of_its_return() {
    // The defaults, and no call at all: only the probe can tell. The store dies and comes
    // back at several points of the probe's cycle.
    let (mut worst_down, mut worst_up) = (Duration::ZERO, Duration::ZERO);
    for offset_ms in [0, 1, 100, 250, 500, 750, 999] {
        let offset = Duration::from_millis(offset_ms);
        let g = Guarded::new(Flaky::default());
        virtual_time_until("the first ping", Duration::ZERO, || pings(&g) == 1).await;
        assert_eq!(g.since_last_success(), Some(Duration::ZERO));
        tokio::time::advance(offset).await;

        set_down(&g, true);
        let down = virtual_time_until("degraded", Duration::from_secs(2), || {
            g.health() == Health::Degraded
        })
        .await;
        assert_eq!(g.breaker(), BreakerState::Open);
        assert!(g.since_last_success().unwrap() >= down + offset);
        worst_down = worst_down.max(down);

        tokio::time::advance(offset).await;
        set_down(&g, false);
        let up =
            virtual_time_until("ok", Duration::from_secs(3), || g.health() == Health::Ok).await;
        assert_eq!(g.breaker(), BreakerState::Closed);
        assert_eq!(g.since_last_success(), Some(Duration::ZERO));
        worst_up = worst_up.max(up);
        assert_eq!(calls(&g), 0, "no call: the probe pinged");
    }
    // Pinged 1 s after the last answer, then every 100 ms: open at the 5th failure.
    assert!(
        around(worst_down, Duration::from_millis(1400)),
        "{worst_down:?}"
    );
    // Pinged once per cool-down while open.
    assert!(worst_up <= Duration::from_millis(1010), "{worst_up:?}");
}

#[tokio::test(start_paused = true)]
async fn the_probe_pings_only_while_no_call_ends() {
    let g = Guarded::new(Flaky::default());
    virtual_time_until("the first ping", Duration::ZERO, || pings(&g) == 1).await;
    // A call every 500 ms: the probe keeps quiet.
    for _ in 0..10 {
        tokio::time::advance(Duration::from_millis(500)).await;
        assert!(g.get("k".into()).await.is_ok());
    }
    assert_eq!(pings(&g), 1);
    // Idle: a ping a second after the last call, then every second.
    let quiet = Instant::now();
    virtual_time_until("3 pings", Duration::from_millis(3010), || pings(&g) == 4).await;
    assert!(around(quiet.elapsed(), Duration::from_secs(3)));
    // A failed call is confirmed by a ping 100 ms later, and the next 100 ms after that.
    set_down(&g, true);
    assert!(g.get("k".into()).await.is_err());
    let failed = Instant::now();
    virtual_time_until("2 more pings", Duration::from_millis(210), || {
        pings(&g) == 6
    })
    .await;
    assert!(around(failed.elapsed(), Duration::from_millis(200)));
    assert_eq!(g.breaker(), BreakerState::Closed, "3 failures of 5");
    virtual_time_until("open", Duration::from_millis(210), || {
        g.breaker() == BreakerState::Open
    })
    .await;
    assert_eq!(calls(&g), 11);
}

#[tokio::test(start_paused = true)]
async fn while_open_calls_fail_at_once_and_the_probe_half_opens_and_closes() {
    let g = Guarded::new(Flaky::default()).failures(3);
    set_down(&g, true);
    for _ in 0..3 {
        assert!(g.get("k".into()).await.is_err());
    }
    assert_eq!(g.breaker(), BreakerState::Open);
    let opened = Instant::now();
    // Past the cool-down a call still fails at once: the probe, not a request, finds out.
    g.get_ref().hang.store(true, Ordering::SeqCst);
    let before = pings(&g);
    virtual_time_until("a ping", Duration::from_millis(1010), || pings(&g) > before).await;
    assert!(around(opened.elapsed(), Duration::from_secs(1)));
    assert_eq!(g.breaker(), BreakerState::HalfOpen, "the ping hangs");
    assert_eq!(g.health(), Health::Degraded);
    assert!(g.get("k".into()).await.is_err());
    assert_eq!(calls(&g), 3);
    // The hanging ping times out: open for another cool-down.
    virtual_time_until("open again", Duration::from_millis(20), || {
        g.breaker() == BreakerState::Open
    })
    .await;
    g.get_ref().hang.store(false, Ordering::SeqCst);
    set_down(&g, false);
    let up = virtual_time_until("closed", Duration::from_millis(1010), || {
        g.breaker() == BreakerState::Closed
    })
    .await;
    assert!(around(up, Duration::from_secs(1)));
    assert_eq!(calls(&g), 3);
    assert!(g.get("k".into()).await.is_ok());
}

#[tokio::test(start_paused = true)]
async fn the_report_gives_the_breaker_and_the_time_since_the_last_success() {
    let (g, _) = guarded();
    let report = |g: &Guarded<Flaky>| HealthCheck::health_report(g).unwrap();
    assert_eq!(report(&g), HealthReport::new(BreakerState::Closed, None));
    assert!(g.get("k".into()).await.is_ok());
    tokio::time::advance(Duration::from_millis(300)).await;
    assert_eq!(g.since_last_success(), Some(Duration::from_millis(300)));
    set_down(&g, true);
    for _ in 0..3 {
        assert!(g.get("k".into()).await.is_err());
    }
    tokio::time::advance(Duration::from_millis(200)).await;
    let r = report(&g);
    assert_eq!(r.breaker, BreakerState::Open);
    assert_eq!(r.since_last_success, Some(Duration::from_millis(500)));
    assert_eq!(r.health(), Health::Degraded);
    // A memory store has no breaker to report.
    assert!(crate::MemoryStore::default().health_check().is_none());
}

#[test]
fn the_probe_starts_with_the_first_call_in_a_runtime_and_ends_with_the_last_clone() {
    // Built outside a runtime: no probe yet.
    let g = Guarded::new(Flaky::default());
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .unwrap();
    rt.block_on(async {
        let alive = || {
            tokio::runtime::Handle::current()
                .metrics()
                .num_alive_tasks()
        };
        tokio::time::advance(Duration::from_secs(5)).await;
        assert_eq!((pings(&g), alive()), (0, 0));
        // A health read through `HealthCheck` is a first use.
        assert_eq!(HealthCheck::health(&g), Health::Ok);
        virtual_time_until("the first ping", Duration::ZERO, || pings(&g) == 1).await;
        assert_eq!(alive(), 1);
        let clone = g.clone();
        drop(g);
        virtual_time_until("a ping", Duration::from_millis(1010), || pings(&clone) == 2).await;
        drop(clone);
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
        assert_eq!(alive(), 0, "the probe ended with the last clone");
    });
}

#[tokio::test(start_paused = true)]
async fn the_probe_waits_at_least_a_millisecond_after_each_ping() {
    // The settings would have it ping again at once, for ever.
    let breaker = Breaker::new(Settings {
        timeout: Duration::from_millis(10),
        threshold: 1,
        cool_down: Duration::ZERO,
        probe_interval: Duration::from_nanos(1),
    });
    for ok in [true, false, false, true] {
        let Next::Ping(permit, _) = breaker.probe_next() else {
            panic!("a ping is due");
        };
        let error = (!ok).then(|| StoreError::new("no answer"));
        permit.finish(error.as_ref());
        let Next::Wait(Some(due)) = breaker.probe_next() else {
            panic!("a ping again at once");
        };
        assert_eq!(due - Instant::now(), MIN_GAP);
        tokio::time::advance(MIN_GAP).await;
    }
}

#[tokio::test(start_paused = true)]
async fn a_zero_interval_turns_the_probe_off() {
    let g = Guarded::new(Flaky::default()).probe_interval(Duration::ZERO);
    set_down(&g, true);
    tokio::time::advance(Duration::from_secs(10)).await;
    assert_eq!((pings(&g), g.health()), (0, Health::Ok));
}

/// A store whose tag invalidation (and key invalidation with its publication) takes `steps`
/// steps of `each`, reporting each, and then hangs if `hang` (a store that stopped answering
/// midway).
struct Walker {
    steps: u32,
    each: Duration,
    hang: bool,
}

impl Walker {
    fn walk(&self) -> StoreFuture<u64> {
        let (steps, each, hang) = (self.steps, self.each, self.hang);
        Box::pin(async move {
            for _ in 0..steps {
                tokio::time::sleep(each).await;
                step_done();
            }
            if hang {
                std::future::pending::<()>().await;
            }
            Ok(u64::from(steps))
        })
    }
}

impl Store for Walker {
    fn get(&self, _: Arc<str>) -> StoreFuture<Option<Arc<Entry>>> {
        Box::pin(std::future::ready(Ok(None)))
    }
    fn put(&self, _: Arc<str>, _: Arc<Entry>, _: Duration) -> StoreFuture<()> {
        Box::pin(std::future::ready(Ok(())))
    }
    fn delete(&self, _: Arc<str>) -> StoreFuture<()> {
        Box::pin(std::future::ready(Ok(())))
    }
    fn invalidate_tag(
        &self,
        _: Arc<str>,
        _: Arc<str>,
        _: SystemTime,
        _: Duration,
    ) -> StoreFuture<()> {
        let walk = self.walk();
        Box::pin(async move { walk.await.map(drop) })
    }
    fn invalidate_and_publish(
        &self,
        _: Arc<str>,
        _: Arc<str>,
        _: Arc<str>,
        _: SystemTime,
        _: Duration,
        _: bytes::Bytes,
    ) -> Option<StoreFuture<u64>> {
        Some(self.walk())
    }
}

/// A walker under a guard of the default timeout (1 s), without probes.
fn walker(steps: u32, each: Duration, hang: bool) -> Guarded<Walker> {
    Guarded::new(Walker { steps, each, hang }).probe_interval(Duration::ZERO)
}

#[tokio::test(start_paused = true)]
async fn a_tag_invalidation_is_timed_per_step_not_as_one_call() {
    let walk = |steps, each, hang| async move {
        let g = walker(steps, each, hang);
        let started = Instant::now();
        let done = g
            .invalidate_tag("ns".into(), "t".into(), SystemTime::now(), Duration::ZERO)
            .await;
        (done, started.elapsed(), g.health())
    };
    let step = Duration::from_millis(900);
    // Ten steps of 0.9 s each: 9 s in all, under a timeout of 1 s.
    let (done, took, health) = walk(10, step, false).await;
    assert!(done.is_ok(), "{done:?}");
    assert_eq!((took, health), (step * 10, Health::Ok));
    // A store that stops answering after three steps: given up 1 s after the last one.
    let (done, took, _) = walk(3, step, true).await;
    let err = done.unwrap_err();
    assert!(err.to_string().contains("no answer within 1s"), "{err}");
    assert_eq!(took, step * 3 + Duration::from_secs(1));
    // One step longer than the timeout.
    let (done, took, _) = walk(1, Duration::from_millis(1500), false).await;
    assert!(done.is_err());
    assert_eq!(took, Duration::from_secs(1));
}

/// A key's invalidation with its publication is guarded as a tag's is: per step, and not
/// at all while the breaker is open.
#[tokio::test(start_paused = true)]
async fn a_key_invalidation_in_one_call_is_timed_per_step_and_refused_by_an_open_breaker() {
    let call = |g: &Guarded<Walker>| {
        let now = SystemTime::now();
        g.invalidate_and_publish(
            "k".into(),
            "ns".into(),
            "~k".into(),
            now,
            Duration::ZERO,
            "m".into(),
        )
        .expect("the walker has it")
    };
    let step = Duration::from_millis(900);
    let g = walker(10, step, false);
    let started = Instant::now();
    assert_eq!(call(&g).await.unwrap(), 10);
    assert_eq!(started.elapsed(), step * 10);
    let g = walker(3, step, true);
    let started = Instant::now();
    let err = call(&g).await.unwrap_err();
    assert!(err.to_string().contains("no answer within 1s"), "{err}");
    assert_eq!(started.elapsed(), step * 3 + Duration::from_secs(1));
    // Failing calls open the breaker: then refused at once.
    for _ in 0..10 {
        let _ = call(&g).await;
        if g.health() != Health::Ok {
            break;
        }
    }
    let started = Instant::now();
    assert!(call(&g).await.unwrap_err().is_circuit_open());
    assert_eq!(started.elapsed(), Duration::ZERO);
}

fn entry() -> Arc<Entry> {
    Arc::new(Entry::new(
        "k",
        http::StatusCode::OK,
        Default::default(),
        bytes::Bytes::new(),
    ))
}

/// A store of two parts, `a` and `b` (a key's part is its first letter), each failing as
/// told; counts calls and pings per part, and the failures reported to it.
#[derive(Default)]
struct Parts {
    down: [AtomicBool; 2],
    calls: [AtomicUsize; 2],
    pings: [AtomicUsize; 2],
    reported: std::sync::Mutex<Vec<String>>,
}

impl Parts {
    fn index(part: &str) -> usize {
        usize::from(part.starts_with('b'))
    }

    fn answer(&self, part: usize) -> StoreFuture<()> {
        if self.down[part].load(Ordering::SeqCst) {
            Box::pin(std::future::ready(Err(StoreError::new("down"))))
        } else {
            Box::pin(std::future::ready(Ok(())))
        }
    }
}

impl Store for Parts {
    fn get(&self, key: Arc<str>) -> StoreFuture<Option<Arc<Entry>>> {
        let part = Self::index(&key);
        self.calls[part].fetch_add(1, Ordering::SeqCst);
        let f = self.answer(part);
        Box::pin(async move { f.await.map(|()| None) })
    }
    fn put(&self, _: Arc<str>, _: Arc<Entry>, _: Duration) -> StoreFuture<()> {
        absent(())
    }
    fn delete(&self, _: Arc<str>) -> StoreFuture<()> {
        absent(())
    }
    fn part_of(&self, key: &str) -> Option<Arc<str>> {
        Some(if key.starts_with('b') { "b" } else { "a" }.into())
    }
    fn part_failing(&self, part: &str) {
        self.reported.lock().unwrap().push(part.to_owned());
    }
    fn health_check(&self) -> Option<&dyn HealthCheck> {
        Some(self)
    }
}

impl HealthCheck for Parts {
    fn ping(&self) -> StoreFuture<()> {
        absent(())
    }
    fn ping_part(&self, part: &str) -> StoreFuture<()> {
        let part = Self::index(part);
        self.pings[part].fetch_add(1, Ordering::SeqCst);
        self.answer(part)
    }
}

#[tokio::test(start_paused = true)]
async fn each_part_has_its_breaker_and_its_probe() {
    let g = Guarded::new(Parts::default())
        .timeout(Duration::from_millis(10))
        .failures(3)
        .cool_down(Duration::from_millis(500))
        .probe_interval(Duration::from_secs(1));
    let parts = g.get_ref();
    parts.down[1].store(true, Ordering::SeqCst);
    for _ in 0..3 {
        assert!(g.get("a1".into()).await.is_ok());
        assert!(g.get("b1".into()).await.is_err());
    }
    // Part b's breaker is open: its calls fail at once, a's keep going to the store.
    assert_eq!(g.breaker(), BreakerState::Open);
    assert_eq!(g.health(), Health::Degraded);
    assert_eq!(g.failing_parts(), ["b"]);
    assert_eq!(*parts.reported.lock().unwrap(), ["b"]);
    for _ in 0..10 {
        assert!(g.get("a2".into()).await.is_ok());
        assert!(g.get("b2".into()).await.is_err());
    }
    assert_eq!(parts.calls[0].load(Ordering::SeqCst), 13);
    assert_eq!(parts.calls[1].load(Ordering::SeqCst), 3);
    assert!(g.since_last_success().is_some());
    // With no call at all, b's probe pings b after the cool-down, and again after each
    // failed ping's cool-down (each failure reported); b comes back: closed.
    virtual_time_until("two pings of part b", Duration::from_secs(2), || {
        parts.pings[1].load(Ordering::SeqCst) >= 2
    })
    .await;
    assert!(parts.reported.lock().unwrap().len() >= 2);
    parts.down[1].store(false, Ordering::SeqCst);
    virtual_time_until("part b closed", Duration::from_secs(2), || {
        g.breaker() == BreakerState::Closed
    })
    .await;
    assert_eq!(g.health(), Health::Ok);
    assert!(g.failing_parts().is_empty());
    assert!(g.get("b3".into()).await.is_ok());
    assert_eq!(parts.calls[1].load(Ordering::SeqCst), 4);
}
