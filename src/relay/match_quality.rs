//! Match quality of what each pixel delivers, over the last hour, day and week: events are counted as OpenAI takes
//! them (with their age at delivery), drops and refusals as they happen, into one tally per minute and one per
//! hour; a report merges the tallies its window covers. Memory stays bounded: a pixel keeps at most 60 minute
//! tallies and 168 hour tallies, each a few hundred counters.

use std::collections::{HashMap, VecDeque};
use std::sync::{Mutex, PoisonError};

use super::store::Pending;
use crate::quality::{Observation, Quality, QualityReport};
use crate::schema::TargetSchema;

const MINUTE_MS: i64 = 60_000;
const HOUR_MS: i64 = 3_600_000;

/// The windows a report covers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub(super) enum Window {
    Hour,
    Day,
    Week,
}

impl Window {
    pub const ALL: [Window; 3] = [Window::Hour, Window::Day, Window::Week];

    pub fn name(self) -> &'static str {
        match self {
            Window::Hour => "hour",
            Window::Day => "day",
            Window::Week => "week",
        }
    }
}

/// One pixel's tallies, newest last.
struct Tallies {
    target: &'static TargetSchema,
    minutes: VecDeque<(i64, Quality)>,
    hours: VecDeque<(i64, Quality)>,
}

impl Tallies {
    fn new(target: &'static TargetSchema) -> Tallies {
        Tallies { target, minutes: VecDeque::new(), hours: VecDeque::new() }
    }

    /// Counts into the minute and the hour of `now_ms`, forgetting tallies past the longest window.
    fn count(&mut self, now_ms: i64, what: impl Fn(&mut Quality)) {
        let target = self.target;
        for (series, width, keep) in [(&mut self.minutes, MINUTE_MS, 60), (&mut self.hours, HOUR_MS, 168)] {
            let start = now_ms - now_ms.rem_euclid(width);
            if series.back().is_none_or(|(at, _)| *at != start) {
                series.push_back((start, Quality::new(target, now_ms)));
            }
            while series.front().is_some_and(|(at, _)| *at <= start - keep * width) {
                series.pop_front();
            }
            what(&mut series.back_mut().expect("just pushed").1);
        }
    }

    fn report(&self, window: Window, now_ms: i64) -> QualityReport {
        let (series, since) = match window {
            Window::Hour => (&self.minutes, now_ms - HOUR_MS),
            Window::Day => (&self.hours, now_ms - 24 * HOUR_MS),
            Window::Week => (&self.hours, now_ms - 168 * HOUR_MS),
        };
        let mut total = Quality::new(self.target, now_ms);
        // A tally counts when its minute or hour ends inside the window: the window is as wide as said, to the
        // width of one tally.
        let width = if window == Window::Hour { MINUTE_MS } else { HOUR_MS };
        for (_, quality) in series.iter().filter(|(start, _)| start + width > since) {
            total.merge(quality);
        }
        total.report()
    }
}

/// Every pixel's tallies.
#[derive(Default)]
pub(super) struct Board {
    pixels: Mutex<HashMap<String, Tallies>>,
}

impl Board {
    fn count(&self, pixel: &str, target: &'static TargetSchema, now_ms: i64, what: impl Fn(&mut Quality)) {
        let mut pixels = self.pixels.lock().unwrap_or_else(PoisonError::into_inner);
        let tallies = pixels.entry(pixel.to_string()).or_insert_with(|| Tallies::new(target));
        if !std::ptr::eq(tallies.target, target) {
            // The pixel's mapping now writes another target: what was counted for the old one no longer compares.
            *tallies = Tallies::new(target);
        }
        tallies.count(now_ms, what);
    }

    /// Events OpenAI took, with their age at delivery.
    pub fn delivered(&self, pixel: &str, target: &'static TargetSchema, events: &[&Pending], now_ms: i64) {
        // Each event is read once, outside the lock, and counted into its minute and its hour.
        let seen: Vec<Observation<'_>> = events
            .iter()
            .filter_map(|pending| {
                let age = pending.timestamp_ms.map(|t| now_ms - t);
                // An event queued before the relay noted consent is taken to have had some: no advice blames it.
                let consent = pending.consent_sent.unwrap_or(true);
                match pending.observed {
                    Some(observed) => Some(Observation::of_observed(&pending.event_type, observed, consent, age)),
                    None => Observation::of_text(&pending.event_type, &pending.event, consent, age),
                }
            })
            .collect();
        self.count(pixel, target, now_ms, |quality| {
            for observation in &seen {
                quality.record(observation);
            }
        });
    }

    pub fn dropped(&self, pixel: &str, target: &'static TargetSchema, reason: &str, now_ms: i64) {
        self.count(pixel, target, now_ms, |quality| quality.observe_dropped(reason));
    }

    /// Events refused: by the mapping at ingestion, or by OpenAI (`openai_rejected`, `expired`) at delivery.
    pub fn rejected(&self, pixel: &str, target: &'static TargetSchema, reason: &str, events: usize, now_ms: i64) {
        self.count(pixel, target, now_ms, |quality| {
            for _ in 0..events {
                quality.observe_rejected(reason);
            }
        });
    }

    /// The report of one pixel over a window; an empty report for a pixel nothing was counted for.
    pub fn report(&self, pixel: &str, target: &'static TargetSchema, window: Window, now_ms: i64) -> QualityReport {
        let pixels = self.pixels.lock().unwrap_or_else(PoisonError::into_inner);
        match pixels.get(pixel) {
            Some(tallies) => tallies.report(window, now_ms),
            None => Quality::new(target, now_ms).report(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pending(event_type: &str, event: &str, timestamp_ms: i64) -> Pending {
        Pending {
            id: "e".to_string(),
            event_type: event_type.to_string(),
            timestamp_ms: Some(timestamp_ms),
            received_ms: timestamp_ms,
            event: event.to_string(),
            consent_sent: Some(true),
            observed: None,
        }
    }

    #[test]
    fn each_window_counts_what_happened_within_it() {
        let target = crate::schema::target(crate::schema::DEFAULT_TARGET).expect("the default target");
        let board = Board::default();
        let now = 1_795_176_000_000;
        let with_email = pending("order_created", r#"{"user":{"email":"x"},"opt_out":false}"#, now - 1000);
        let bare = pending("order_created", r#"{"opt_out":false}"#, now - 1000);
        // Eight days ago, two days ago, two hours ago, and now.
        for (ago, event) in
            [(192 * HOUR_MS, &bare), (48 * HOUR_MS, &with_email), (2 * HOUR_MS, &bare), (0, &with_email)]
        {
            board.delivered("shop", target, &[event], now - ago);
        }
        board.dropped("shop", target, "identify", now);
        let counts = |window| {
            let report = board.report("shop", target, window, now);
            (report.mapped, report.types.first().map(|t| t.signals["email"]))
        };
        assert_eq!(counts(Window::Hour), (1, Some(1.0)));
        assert_eq!(counts(Window::Day), (2, Some(0.5)));
        assert_eq!(counts(Window::Week), (3, Some(0.667)));
        assert_eq!(board.report("shop", target, Window::Hour, now).dropped["identify"], 1);
        assert_eq!(board.report("blog", target, Window::Week, now).events, 0);
        let tallies = board.pixels.lock().unwrap();
        assert!(tallies["shop"].hours.len() <= 168 && tallies["shop"].minutes.len() <= 60);
    }
}
