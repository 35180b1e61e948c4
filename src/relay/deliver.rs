//! Delivery: one task per pixel takes the oldest queued events, at most `batch.max_events` at a time once the batch
//! is full or its oldest event has lingered long enough, and POSTs them to `{endpoint}/v1/events?pid=…`. 2xx
//! completes them. 429, 5xx, timeouts and connection errors are retried with jittered exponential backoff that
//! honours Retry-After; the events keep their ids, so OpenAI's deduplication makes retries harmless. A 400 or 422
//! rejects the whole batch: it is split in halves until the bad events are isolated, the rest is delivered and
//! the bad ones are dead-lettered with OpenAI's answer. 401 and 403 pause the pixel without dropping anything;
//! the next batch is tried again every `retry.auth_probe` until the key works.

use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;
use std::sync::Arc;
use std::time::{Duration, Instant};

use reqwest::header::{HeaderMap, CONTENT_TYPE, RETRY_AFTER};
use secrecy::ExposeSecret;
use tokio::sync::watch;

use super::debug::Attempt;
use super::killpoint;
use super::registry::{LastDelivery, Pixel};
use super::store::{Hold, Pending, StoreError};
use super::{now_ms, Shared};
use crate::run::outside_window;

/// What OpenAI made of one request.
enum Answer {
    Accepted,
    /// The batch was refused as a whole (400, 422, 413): some event in it is bad.
    Refused {
        status: u16,
        body: String,
    },
    /// Try again later (429, 5xx, timeout, connection error).
    Later {
        after: Option<Duration>,
        why: String,
    },
    /// The key is invalid or not authorised for this pixel (401, 403).
    Unauthorized {
        status: u16,
        body: String,
    },
}

/// How a round of delivery ended.
enum Round {
    Done,
    /// The relay is stopping: the request in flight was abandoned, its events stay queued for the next start.
    Stopped,
    Later {
        after: Option<Duration>,
        why: String,
    },
    Unauthorized {
        status: u16,
        body: String,
    },
}

type Batch = [(u64, Pending)];

struct Deliverer {
    shared: Arc<Shared>,
    pixel: Arc<Pixel>,
    client: reqwest::Client,
}

/// `Some(deadline)` once the relay is stopping: the queue is drained until then.
type Stop = watch::Receiver<Option<Instant>>;

pub(super) async fn run(shared: Arc<Shared>, pixel: Arc<Pixel>, mut shutdown: Stop) {
    let client = match reqwest::Client::builder().timeout(shared.config.retry.timeout).build() {
        Ok(client) => client,
        Err(error) => {
            tracing::error!(%error, "cannot create the HTTP client; delivery is stopped, events stay queued");
            return;
        }
    };
    let deliverer = Deliverer { shared: shared.clone(), pixel: pixel.clone(), client };
    let pixel = &*pixel;
    let batching = shared.config.batch;
    let fleet = shared.store.shared();
    // Events other relays queue wake nobody here: on a shared store an idle pixel looks again this often.
    let idle_poll = if fleet { Duration::from_millis(250) } else { Duration::from_secs(3600) };
    let mut failures: u32 = 0;
    let mut probe = false;
    // On a shared store, the next batch is claimed while OpenAI answers this one (pipelined claims): under load the
    // relay goes from one request to the next without waiting for the database in between.
    let mut ahead: Option<Vec<(u64, Pending)>> = None;
    loop {
        if pixel.is_removed() {
            tracing::info!(pixel = %pixel.name, "the pixel was removed: its delivery ends");
            break;
        }
        // A disabled pixel sends nothing; its queue waits until it is enabled again (which wakes this task).
        if pixel.setup().disabled {
            deliverer.release(ahead.take()).await;
            if shutdown.borrow().is_some() {
                break;
            }
            tokio::select! {
                _ = pixel.queued.notified() => {}
                _ = shutdown.changed() => {}
            }
            continue;
        }
        // Stopping, the queue is drained without waiting for full batches, until it is empty, the grace period
        // ends, or OpenAI cannot take it now; what is left stays stored for the next start.
        let draining = *shutdown.borrow();
        if draining.is_some_and(|deadline| Instant::now() >= deadline) {
            break;
        }
        let batch = if let Some(batch) = ahead.take() {
            batch
        } else {
            if fleet && !std::mem::take(&mut probe) {
                match deliverer.store(|store, name| store.hold(name)).await {
                    // Another relay was told to wait (Retry-After): so is this one.
                    Ok(Hold { until_ms: Some(until), .. }) if until > now_ms() && draining.is_none() => {
                        pause(&mut shutdown, Duration::from_millis((until - now_ms()) as u64)).await;
                        continue;
                    }
                    // Another relay found the key refused: this one pauses too, and probes as it would have.
                    Ok(Hold { paused_why: Some(why), .. }) => {
                        if !pixel.set_paused(Some(why.clone())) {
                            tracing::warn!(pixel = %pixel.name, %why, "paused: another relay found the API key refused");
                        }
                        if draining.is_some() {
                            break;
                        }
                        pause(&mut shutdown, shared.config.retry.auth_probe).await;
                        probe = true;
                        continue;
                    }
                    Ok(_) => {
                        // Another relay's probe found the key working and lifted the hold.
                        if pixel.set_paused(None) {
                            tracing::info!(pixel = %pixel.name, "the API key works again: delivery resumed");
                        }
                    }
                    Err(error) => {
                        if store_failed(
                            &pixel.name,
                            "cannot read the pixel's hold",
                            &error,
                            draining.is_some(),
                            &mut shutdown,
                        )
                        .await
                        {
                            break;
                        }
                        continue;
                    }
                }
            }
            // Whether a batch goes now is decided from the queue's count and its oldest event, without reading every
            // event: a batch fills over many commits, each of which wakes this loop.
            let waiting = deliverer.store(move |store, name| store.waiting(name, batching.max_events)).await;
            let (count, oldest) = match waiting {
                Ok(waiting) => waiting,
                Err(error) => {
                    if store_failed(&pixel.name, "cannot read the queue", &error, draining.is_some(), &mut shutdown)
                        .await
                    {
                        break;
                    }
                    continue;
                }
            };
            if count == 0 {
                if draining.is_some() {
                    break;
                }
                tokio::select! {
                    _ = pixel.queued.notified() => {}
                    _ = shutdown.changed() => {}
                    _ = tokio::time::sleep(idle_poll) => {}
                }
                continue;
            }
            if count < batching.max_events && draining.is_none() {
                let waited = now_ms() - oldest.unwrap_or_default();
                let linger = batching.linger.as_millis() as i64;
                if waited < linger {
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_millis((linger - waited) as u64)) => {}
                        _ = pixel.queued.notified() => {}
                        _ = shutdown.changed() => {}
                    }
                    continue;
                }
            }
            // What was looked at is taken now: on a shared store another relay may have taken some of it meanwhile.
            let taken = if fleet {
                deliverer.store(move |store, name| store.claim(name, batching.max_events)).await
            } else {
                deliverer.store(move |store, name| store.peek(name, batching.max_events)).await
            };
            match taken {
                Ok(taken) if taken.is_empty() => continue,
                Ok(taken) => taken,
                Err(error) => {
                    let what = if fleet { "cannot claim a batch" } else { "cannot read the queue" };
                    if store_failed(&pixel.name, what, &error, draining.is_some(), &mut shutdown).await {
                        break;
                    }
                    continue;
                }
            }
        };
        let claimed = batch.len();
        let live = match deliverer.expire(batch).await {
            Ok(live) => live,
            Err(error) => {
                tracing::error!(pixel = %pixel.name, %error, "cannot dead-letter expired events");
                if draining.is_some() {
                    break;
                }
                pause(&mut shutdown, Duration::from_secs(1)).await;
                continue;
            }
        };
        if live.is_empty() {
            continue;
        }
        // A full batch says more is waiting: claim the next one while this one is sent.
        let claim_ahead = async {
            if fleet && claimed >= batching.max_events {
                deliverer.store(move |store, name| store.claim(name, batching.max_events)).await.ok()
            } else {
                None
            }
        };
        let (round, next) = tokio::join!(deliverer.round(&live, &mut shutdown), claim_ahead);
        let stopping = shutdown.borrow().is_some();
        let next = next.filter(|batch| !batch.is_empty());
        if fleet && !matches!(round, Round::Done) {
            // OpenAI's Retry-After or refusal of the key holds back every relay sending to this pixel, not only this
            // one; the hold is in place before the events go back, or another relay could take and send them first.
            let hold = match &round {
                Round::Later { after: Some(after), .. } => {
                    Some(Hold { paused_why: None, until_ms: Some(now_ms() + after.as_millis() as i64) })
                }
                Round::Unauthorized { status, body } => {
                    Some(Hold { paused_why: Some(unauthorized_why(*status, body)), until_ms: None })
                }
                _ => None,
            };
            if let Some(hold) = hold {
                if let Err(error) = deliverer.store(move |store, name| store.set_hold(name, &hold)).await {
                    tracing::error!(pixel = %pixel.name, %error, "cannot hold the pixel back for the fleet");
                }
            }
            // What is not settled goes back to the shared queue now, not when the lease runs out.
            deliverer.release(Some(live.clone())).await;
            deliverer.release(next).await;
        } else {
            // Only a full batch goes at once; a partial one is handed back and waits for the linger as usual.
            match next {
                Some(batch) if batch.len() >= batching.max_events => ahead = Some(batch),
                partial => deliverer.release(partial).await,
            }
        }
        match round {
            Round::Stopped => {
                tracing::info!(
                    pixel = %pixel.name,
                    events = live.len(),
                    "stopping: the grace period is over; the request in flight is abandoned and its events stay \
                     queued with their ids"
                );
                break;
            }
            Round::Done => {
                failures = 0;
                if pixel.set_paused(None) {
                    tracing::info!(pixel = %pixel.name, "the API key works again: delivery resumed");
                    if fleet {
                        // Every relay resumes: the hold is lifted for all.
                        if let Err(error) = deliverer.store(|store, name| store.set_hold(name, &Hold::default())).await
                        {
                            tracing::error!(pixel = %pixel.name, %error, "cannot lift the pixel's hold");
                        }
                    }
                }
            }
            Round::Later { after, why } => {
                failures = failures.saturating_add(1);
                deliverer.shared.metrics.retried(&pixel.name, &why);
                if stopping {
                    tracing::info!(pixel = %pixel.name, %why, "stopping: undelivered events stay queued");
                    break;
                }
                let delay = backoff(&shared.config.retry, failures).max(after.unwrap_or_default());
                tracing::warn!(pixel = %pixel.name, %why, retry_in_ms = delay.as_millis() as u64, "delivery will be retried");
                pause(&mut shutdown, delay).await;
            }
            Round::Unauthorized { status, body } => {
                let why = unauthorized_why(status, &body);
                if !pixel.set_paused(Some(why)) {
                    tracing::error!(
                        pixel = %pixel.name,
                        status,
                        response = %body,
                        "OpenAI refused the API key: delivery is paused, every event is kept, and delivery resumes \
                         by itself once the key works"
                    );
                }
                if stopping {
                    break;
                }
                pause(&mut shutdown, shared.config.retry.auth_probe).await;
            }
        }
    }
    // A batch claimed ahead and never sent goes back to the shared queue for the next relay or start.
    deliverer.release(ahead.take()).await;
}

/// Sleeps, or returns early when the relay starts stopping.
/// After a call to the store failed: logs it and, unless delivery is draining to stop (then `true`: stop now), waits a
/// second before the loop tries again.
async fn store_failed(pixel: &str, what: &str, error: &StoreError, draining: bool, shutdown: &mut Stop) -> bool {
    tracing::error!(pixel, %error, "{what}");
    if !draining {
        pause(shutdown, Duration::from_secs(1)).await;
    }
    draining
}

async fn pause(shutdown: &mut Stop, delay: Duration) {
    tokio::select! {
        _ = tokio::time::sleep(delay) => {}
        _ = shutdown.changed() => {}
    }
}

/// Exponential backoff from `initial` up to `max`, with "full jitter" between half and all of it so that relays
/// restarted together do not retry in step.
fn backoff(retry: &super::config::Retry, failures: u32) -> Duration {
    let exponent = failures.saturating_sub(1).min(20);
    let ceiling = retry.initial_backoff.saturating_mul(1 << exponent).min(retry.max_backoff);
    let unit = (RandomState::new().hash_one(failures) % 1000) as f64 / 1000.0;
    ceiling.mul_f64(0.5 + unit / 2.0)
}

/// Why delivery pauses when OpenAI refuses the API key, as the pixel's state and the fleet's hold say it.
fn unauthorized_why(status: u16, body: &str) -> String {
    format!("OpenAI refused the API key (HTTP {status}): {}", cut(body, 300))
}

/// `Retry-After` in seconds or as an HTTP date (any of the three forms HTTP allows), never longer than `ceiling`
/// (`retry.max_backoff_ms`): an answer asking for a day must not pause a pixel for a day.
fn retry_after(headers: &HeaderMap, ceiling: Duration) -> Option<Duration> {
    let text = headers.get(RETRY_AFTER)?.to_str().ok()?.trim();
    let wait = match text.parse::<u64>() {
        Ok(seconds) => Duration::from_secs(seconds),
        Err(_) => {
            let at = httpdate::parse_http_date(text).ok()?;
            at.duration_since(std::time::SystemTime::now()).unwrap_or(Duration::ZERO)
        }
    };
    Some(wait.min(ceiling))
}

fn cut(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_string();
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &text[..end])
}

impl Deliverer {
    fn pixel(&self) -> &Pixel {
        &self.pixel
    }

    /// Runs a store call off the async threads.
    async fn store<T: Send + 'static>(
        &self,
        call: impl FnOnce(&dyn super::store::Store, &str) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let shared = self.shared.clone();
        let pixel = self.pixel.clone();
        tokio::task::spawn_blocking(move || call(shared.store.as_ref(), &pixel.name))
            .await
            .map_err(|e| StoreError(format!("the storage task failed: {e}")))?
    }

    /// Dead-letters the events OpenAI would refuse for their age (or a clock far ahead); returns the others.
    async fn expire(&self, batch: Vec<(u64, Pending)>) -> Result<Vec<(u64, Pending)>, StoreError> {
        let now = now_ms();
        let mut expired = Vec::new();
        let mut live = Vec::new();
        let mut dead: Vec<(u64, String, String)> = Vec::new();
        for (seq, pending) in batch {
            match pending.timestamp_ms.and_then(|ms| outside_window(ms, now)) {
                Some(why) => {
                    dead.push((seq, "expired".to_string(), format!("`timestamp_ms` {why}, at send time")));
                    expired.push((seq, pending));
                }
                None => live.push((seq, pending)),
            }
        }
        if !expired.is_empty() {
            let count = dead.len();
            self.store(move |store, name| store.bury(name, &dead, now)).await?;
            let pixel = self.pixel();
            tracing::warn!(pixel = %pixel.name, events = count, "events expired before delivery: dead-lettered");
            self.shared.metrics.dead_lettered(&pixel.name, "expired", count);
            let target = pixel.setup().plan.target_schema();
            self.shared.quality.rejected(&pixel.name, target, "expired", count, now);
            let ids: Vec<&str> = expired.iter().map(|(_, p)| p.id.as_str()).collect();
            let attempt = Attempt {
                at_ms: now,
                status: None,
                response: "expired before delivery: outside OpenAI's timestamp window".to_string(),
                batch_size: count,
                dry_run: self.shared.config.dry_run,
            };
            self.shared.debug.attempt(&pixel.name, &ids, &attempt, Some("dead_lettered"));
        }
        Ok(live)
    }

    /// Delivers a batch, splitting refused batches in halves until each bad event stands alone. A stop does not
    /// wait for OpenAI's answer (up to `retry.timeout`): what is not settled yet is stored and sent again later.
    async fn round(&self, batch: &Batch, shutdown: &mut Stop) -> Round {
        let mut parts: Vec<&Batch> = vec![batch];
        while let Some(part) = parts.pop() {
            if shutdown.borrow().is_some() {
                killpoint::reached("deliver.drain");
            }
            if self.shared.store.shared() {
                // The lease covers this request and the halves after it; the heartbeat below covers a slow answer.
                let seqs: Vec<u64> = batch.iter().map(|(seq, _)| *seq).collect();
                if let Err(error) = self.store(move |store, name| store.extend(name, &seqs)).await {
                    return Round::Later { after: None, why: format!("storage: {}", error.0) };
                }
            }
            let post = self.heartbeat(self.post(part), batch);
            tokio::pin!(post);
            // A stop lets the request in flight finish within the grace period; past it, the request is abandoned
            // (its events stay queued, and OpenAI deduplicates them by id if it did take them).
            let answer = loop {
                let draining = *shutdown.borrow();
                match draining {
                    Some(deadline) => tokio::select! {
                        answer = &mut post => break answer,
                        _ = tokio::time::sleep_until(deadline.into()) => return Round::Stopped,
                    },
                    None => tokio::select! {
                        answer = &mut post => break answer,
                        // Err means the handle is gone without a stop: keep delivering.
                        Ok(()) = shutdown.changed() => continue,
                    },
                }
            };
            match answer {
                Answer::Accepted => {
                    killpoint::reached("deliver.after_send");
                    if let Err(round) = self.settle(part, None).await {
                        return round;
                    }
                    killpoint::reached("deliver.after_settle");
                }
                Answer::Refused { status, body } if part.len() == 1 => {
                    killpoint::reached("deliver.dead_letter");
                    let detail = format!("HTTP {status}: {body}");
                    if let Err(round) = self.settle(part, Some(detail)).await {
                        return round;
                    }
                }
                Answer::Refused { .. } => {
                    killpoint::reached("deliver.bisect");
                    let (first, second) = part.split_at(part.len() / 2);
                    parts.push(second);
                    parts.push(first);
                }
                Answer::Later { after, why } => return Round::Later { after, why },
                Answer::Unauthorized { status, body } => return Round::Unauthorized { status, body },
            }
        }
        Round::Done
    }

    /// Gives a batch this relay will not send now back to the shared queue.
    async fn release(&self, batch: Option<Vec<(u64, Pending)>>) {
        let Some(batch) = batch.filter(|b| !b.is_empty() && self.shared.store.shared()) else { return };
        let seqs: Vec<u64> = batch.iter().map(|(seq, _)| *seq).collect();
        if let Err(error) = self.store(move |store, name| store.release(name, &seqs)).await {
            tracing::warn!(pixel = %self.pixel.name, %error, "cannot release a batch; its lease runs out by itself");
        }
    }

    /// Runs `work` (a request to OpenAI) while extending this relay's lease on `batch` every few seconds, so that a
    /// slow answer does not let another relay take and send the same events meanwhile.
    async fn heartbeat<T>(&self, work: impl std::future::Future<Output = T>, batch: &Batch) -> T {
        if !self.shared.store.shared() {
            return work.await;
        }
        tokio::pin!(work);
        let every = (self.shared.config.retry.timeout / 3).max(Duration::from_millis(200));
        let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
        loop {
            tokio::select! {
                done = &mut work => return done,
                _ = ticks.tick() => {
                    let seqs: Vec<u64> = batch.iter().map(|(seq, _)| *seq).collect();
                    if let Err(error) = self.store(move |store, name| store.extend(name, &seqs)).await {
                        tracing::warn!(pixel = %self.pixel.name, %error, "cannot extend the lease of a batch in flight");
                    }
                }
            }
        }
    }

    /// Removes delivered events from the queue, or dead-letters a refused one with OpenAI's answer.
    async fn settle(&self, part: &Batch, refused: Option<String>) -> Result<(), Round> {
        let seqs: Vec<u64> = part.iter().map(|(seq, _)| *seq).collect();
        let count = seqs.len();
        let name = self.pixel.name.clone();
        let result = match refused.clone() {
            None => self.store(move |store, name| store.complete(name, &seqs)).await,
            Some(detail) => {
                let dead: Vec<(u64, String, String)> =
                    seqs.iter().map(|seq| (*seq, "rejected".to_string(), detail.clone())).collect();
                self.store(move |store, name| store.bury(name, &dead, now_ms())).await
            }
        };
        if let Err(error) = result {
            // The events stay queued and are sent again: OpenAI deduplicates them by id.
            return Err(Round::Later { after: None, why: format!("storage: {}", error.0) });
        }
        let target = self.pixel.setup().plan.target_schema();
        match refused {
            None => {
                self.shared.metrics.delivered(&name, count);
                let events: Vec<&Pending> = part.iter().map(|(_, pending)| pending).collect();
                self.shared.quality.delivered(&name, target, &events, now_ms());
            }
            Some(detail) => {
                self.shared.quality.rejected(&name, target, "openai_rejected", count, now_ms());
                tracing::warn!(pixel = %name, id = %part[0].1.id, %detail, "OpenAI refused an event: dead-lettered");
                self.shared.metrics.dead_lettered(&name, "rejected", count);
            }
        }
        Ok(())
    }

    /// One request to OpenAI (or, in dry-run mode, to the log).
    async fn post(&self, part: &Batch) -> Answer {
        let pixel = self.pixel();
        let setup = pixel.setup();
        let config = &setup.config;
        let mut body = String::with_capacity(part.iter().map(|(_, p)| p.event.len() + 1).sum::<usize>() + 40);
        body.push('{');
        if config.validate_only {
            body.push_str("\"validate_only\":true,");
        }
        body.push_str("\"events\":[");
        for (i, (_, pending)) in part.iter().enumerate() {
            if i > 0 {
                body.push(',');
            }
            body.push_str(&pending.event);
        }
        body.push_str("]}");
        let ids: Vec<&str> = part.iter().map(|(_, p)| p.id.as_str()).collect();
        let record = |status: Option<u16>, response: &str, state: Option<&str>| {
            let attempt = Attempt {
                at_ms: now_ms(),
                status,
                response: cut(response, 2048),
                batch_size: part.len(),
                dry_run: self.shared.config.dry_run,
            };
            pixel.record_delivery(LastDelivery {
                at_ms: attempt.at_ms,
                status,
                response: cut(response, 300),
                events: part.len(),
            });
            self.shared.debug.attempt(&pixel.name, &ids, &attempt, state);
        };
        let Some(api_key) = config.api_key.as_ref().filter(|_| !self.shared.config.dry_run) else {
            tracing::info!(pixel = %config.name, pid = %config.pixel_id, events = part.len(), body = %cut(&body, 4096), "dry run: batch not sent");
            // Not "delivered": nothing reached OpenAI, and the debugger must not say it did.
            record(None, "dry run: not sent to OpenAI", Some("dry_run"));
            return Answer::Accepted;
        };
        let started = Instant::now();
        let result = self
            .client
            .post(format!(
                "{}/v1/events?pid={}",
                config.endpoint,
                form_urlencoded::byte_serialize(config.pixel_id.as_bytes()).collect::<String>()
            ))
            .bearer_auth(api_key.expose_secret())
            .header(CONTENT_TYPE, "application/json")
            .body(body)
            .send()
            .await;
        let response = match result {
            Ok(response) => response,
            Err(error) => {
                let why = if error.is_timeout() { "timeout" } else { "connection error" };
                // reqwest's message names the URL (with the pixel id) but never the Authorization header.
                record(None, &format!("{why}: {error}"), None);
                return Answer::Later { after: None, why: why.to_string() };
            }
        };
        let status = response.status().as_u16();
        let after = retry_after(response.headers(), self.shared.config.retry.max_backoff);
        let text = response.text().await.unwrap_or_default();
        self.shared.metrics.batch_latency(&config.name, started.elapsed().as_secs_f64());
        let answer = match status {
            200..=299 => Answer::Accepted,
            400 | 413 | 422 => Answer::Refused { status, body: cut(&text, 16 * 1024) },
            401 | 403 => Answer::Unauthorized { status, body: cut(&text, 2048) },
            429 => Answer::Later { after, why: "throttled (429)".to_string() },
            _ => Answer::Later { after, why: format!("HTTP {status}") },
        };
        let state = match (&answer, part.len()) {
            // OpenAI checked the events and recorded nothing: the debugger says so rather than "delivered".
            (Answer::Accepted, _) if config.validate_only => Some("validated"),
            (Answer::Accepted, _) => Some("delivered"),
            (Answer::Refused { .. }, 1) => Some("dead_lettered"),
            _ => None,
        };
        record(Some(status), &text, state);
        answer
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_to_its_ceiling_with_jitter() {
        let retry = super::super::config::Retry {
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(2),
            timeout: Duration::from_secs(1),
            auth_probe: Duration::from_secs(1),
        };
        for failures in 1..40 {
            let ceiling = Duration::from_millis(100 * (1u64 << (failures - 1).min(20))).min(Duration::from_secs(2));
            let delay = backoff(&retry, failures);
            assert!(
                delay <= ceiling && delay >= ceiling / 2,
                "{failures}: {delay:?} not in [{:?}, {ceiling:?}]",
                ceiling / 2
            );
        }
    }

    #[test]
    fn retry_after_in_seconds_or_as_a_date() {
        let mut headers = HeaderMap::new();
        let ceiling = Duration::from_secs(60);
        headers.insert(RETRY_AFTER, "7".parse().unwrap());
        assert_eq!(retry_after(&headers, ceiling), Some(Duration::from_secs(7)));
        headers.insert(RETRY_AFTER, "86400".parse().unwrap());
        assert_eq!(retry_after(&headers, ceiling), Some(ceiling), "a day is capped at retry.max_backoff_ms");
        for past in ["Wed, 21 Oct 2015 07:28:00 GMT", "Wednesday, 21-Oct-15 07:28:00 GMT", "Wed Oct 21 07:28:00 2015"] {
            headers.insert(RETRY_AFTER, past.parse().unwrap());
            assert_eq!(retry_after(&headers, ceiling), Some(Duration::ZERO), "{past}: a date in the past means now");
        }
        let soon = std::time::SystemTime::now() + Duration::from_secs(30);
        headers.insert(RETRY_AFTER, httpdate::fmt_http_date(soon).parse().unwrap());
        let wait = retry_after(&headers, ceiling).unwrap();
        assert!(wait > Duration::from_secs(27) && wait <= Duration::from_secs(30), "{wait:?}");
        headers.insert(RETRY_AFTER, "soon".parse().unwrap());
        assert_eq!(retry_after(&headers, ceiling), None);
    }
}
