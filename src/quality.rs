//! Match quality: how well the events a mapping produces are equipped for OpenAI to match them to ad clicks (the
//! click id `oppref` and the user fields), per event type, with a score from 0 to 10 and advice that names the fix
//! in this product's terms. Fed one outcome at a time; pure, so that `engine quality` and the relay share it. Tallies
//! merge, so that the relay keeps one per minute and per hour and reports the last hour, day or week from them.

use std::collections::BTreeMap;
use std::sync::OnceLock;

use serde::Serialize;
use serde_json::Value;

use crate::functions::Val;
use crate::input::{InputLayout, InputPaths, Step};
use crate::observe::Observer;
use crate::plan::LayoutNode;
use crate::run::{Out, Outcome, RejectReason};
use crate::schema::TargetSchema;

/// The identity signals OpenAI matches on: a name, the output fields that carry it (either spelling of a target),
/// and its weight in the score. The weights sum to 10: the click id and the email decide most matches.
const SIGNALS: [(&str, &[&str], f64); 6] = [
    ("oppref", &["oppref"], 3.0),
    ("email", &["user.email", "user.email_sha256"], 3.0),
    ("phone", &["user.phone_number"], 1.5),
    ("external_id", &["user.external_id", "user.external_id_sha256"], 1.0),
    ("ip_address", &["user.ip_address"], 0.75),
    ("user_agent", &["user.user_agent"], 0.75),
];

/// Output fields that hold SHA-256 digests when present.
const HASHED: [&str; 4] = ["user.email", "user.email_sha256", "user.phone_number", "user.external_id_sha256"];

/// Conversion events and what each should carry besides the identity signals.
const CONVERSIONS: [(&str, &[Measure]); 5] = [
    ("order_created", &[Measure::AmountAndCurrency, Measure::OrderId, Measure::Contents]),
    ("checkout_started", &[Measure::AmountAndCurrency, Measure::Contents]),
    ("items_added", &[Measure::Contents]),
    ("subscription_created", &[Measure::AmountAndCurrency, Measure::PlanId]),
    ("trial_started", &[Measure::PlanId]),
];

/// Below this share a signal or measure gets advice.
const ADVICE_BELOW: f64 = 0.8;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
enum Measure {
    AmountAndCurrency,
    OrderId,
    Contents,
    PlanId,
}

impl Measure {
    const ALL: [Measure; 4] = [Measure::AmountAndCurrency, Measure::OrderId, Measure::Contents, Measure::PlanId];

    fn name(self) -> &'static str {
        match self {
            Measure::AmountAndCurrency => "amount_and_currency",
            Measure::OrderId => "order_id",
            Measure::Contents => "contents",
            Measure::PlanId => "plan_id",
        }
    }

    fn holds<'v>(self, field: &impl Fn(&str) -> Seen<'v>) -> bool {
        match self {
            Measure::AmountAndCurrency => {
                matches!(field("data.amount"), Seen::Number) && matches!(field("data.currency"), Seen::Str(_))
            }
            Measure::OrderId => field("data.order_id").present(),
            Measure::Contents => matches!(field("data.contents"), Seen::Array(len) if len > 0),
            Measure::PlanId => field("data.plan_id").present(),
        }
    }
}

/// The output fields match quality reads.
const READ: [&str; 14] = [
    "oppref",
    "user.email",
    "user.email_sha256",
    "user.phone_number",
    "user.external_id",
    "user.external_id_sha256",
    "user.ip_address",
    "user.user_agent",
    "opt_out",
    "data.amount",
    "data.currency",
    "data.order_id",
    "data.contents",
    "data.plan_id",
];

/// What an output field holds, as far as match quality asks.
#[derive(Clone, Copy)]
enum Seen<'a> {
    Nothing,
    Bool(bool),
    Number,
    Str(&'a str),
    Array(usize),
    Object,
}

impl<'a> Seen<'a> {
    fn of_json(value: &'a Value) -> Seen<'a> {
        match value {
            Value::Null => Seen::Nothing,
            Value::Bool(b) => Seen::Bool(*b),
            Value::Number(_) => Seen::Number,
            Value::String(s) => Seen::Str(s),
            Value::Array(items) => Seen::Array(items.len()),
            Value::Object(_) => Seen::Object,
        }
    }

    fn of_val(value: Option<&'a Val<'a>>) -> Seen<'a> {
        match value {
            None | Some(Val::Null) => Seen::Nothing,
            Some(Val::Bool(b)) => Seen::Bool(*b),
            Some(Val::Number(_)) => Seen::Number,
            Some(Val::Str(s)) => Seen::Str(s),
            Some(Val::Array(items)) => Seen::Array(items.len()),
            Some(Val::Object(_)) => Seen::Object,
        }
    }

    fn of_out(out: Option<&'a Out<'a>>) -> Seen<'a> {
        match out {
            Some(Out::Value(value)) => Seen::of_val(Some(value)),
            Some(Out::Elements(elements)) => Seen::Array(elements.len()),
            None => Seen::Nothing,
        }
    }

    fn present(self) -> bool {
        match self {
            Seen::Nothing => false,
            Seen::Str(s) => !s.is_empty(),
            _ => true,
        }
    }

    fn is_sha256(self) -> bool {
        matches!(self, Seen::Str(s) if s.len() == 64 && s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)))
    }
}

/// The reader of [`READ`] from an event's text, and the slot of each field.
fn text_reader() -> &'static (InputLayout, [usize; READ.len()]) {
    static READER: OnceLock<(InputLayout, [usize; READ.len()])> = OnceLock::new();
    READER.get_or_init(|| {
        let mut paths = InputPaths::default();
        let ids = READ.map(|field| paths.add(field.split('.').map(|key| Step::Key(key.to_string())).collect()));
        let (layout, resolved) = paths.build();
        (layout, ids.map(|id| resolved[id].0))
    })
}

/// What an OpenAI event carries that match quality counts, whatever its type: which signals, how many hashed fields
/// and how many of them are well-formed digests, whether it opts out, and which measures it holds. Small and plain,
/// so that the relay notes it in a queued event's row when it maps the event, and delivery counts the event without
/// reading its text again. Serialised as one number (bits: 0-7 signals, 8-15 hashed, 16-23 well-formed, 24 opted
/// out, 32-39 measures held).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Deserialize, Serialize)]
#[serde(transparent)]
pub struct Observed(u64);

impl Observed {
    #[cfg(test)]
    pub(crate) fn from_bits(bits: u64) -> Observed {
        Observed(bits)
    }

    fn of<'v>(field: impl Fn(&str) -> Seen<'v>) -> Observed {
        let mut bits = 0u64;
        for (index, (_, fields, _)) in SIGNALS.iter().enumerate() {
            bits |= u64::from(fields.iter().any(|f| field(f).present())) << index;
        }
        let (mut hashed, mut well_formed) = (0u64, 0u64);
        for name in HASHED {
            let value = field(name);
            if value.present() {
                hashed += 1;
                well_formed += u64::from(value.is_sha256());
            }
        }
        bits |= hashed << 8 | well_formed << 16;
        bits |= u64::from(matches!(field("opt_out"), Seen::Bool(true))) << 24;
        for (index, measure) in Measure::ALL.iter().enumerate() {
            bits |= u64::from(measure.holds(&field)) << (32 + index);
        }
        Observed(bits)
    }

    fn signal(self, index: usize) -> bool {
        self.0 >> index & 1 == 1
    }

    fn holds(self, measure: Measure) -> bool {
        let index = Measure::ALL.iter().position(|m| *m == measure).unwrap_or_default();
        self.0 >> (32 + index) & 1 == 1
    }
}

/// The output slots of the fields match quality reads, in a plan's layout (`None` for a field it does not write).
pub(crate) type QualitySlots = [Option<usize>; READ.len()];

/// Where each field of [`READ`] is in `layout`.
pub(crate) fn quality_slots(layout: &[LayoutNode]) -> QualitySlots {
    fn find(nodes: &[LayoutNode], dotted: &str) -> Option<usize> {
        nodes.iter().find_map(|node| match node {
            LayoutNode::Leaf { path, slot, .. } | LayoutNode::Elements { path, slot, .. } => {
                (**path == *dotted).then_some(*slot)
            }
            LayoutNode::Object { children, .. } => find(children, dotted),
        })
    }
    READ.map(|dotted| find(layout, dotted))
}

/// Notes what an event about to be sent says about its match quality, from its output slots: exactly what
/// [`Observation::of_text`] reads from the event's text, since the slots are what is written.
pub(crate) struct QualityWatch<'p> {
    slots: &'p QualitySlots,
    pub observed: Option<Observed>,
}

impl<'p> QualityWatch<'p> {
    pub fn new(slots: &'p QualitySlots) -> Self {
        QualityWatch { slots, observed: None }
    }
}

impl<'p> Observer<'p> for QualityWatch<'_> {
    const TRACING: bool = false;
    const WATCHES_SENT: bool = true;

    fn sent(&mut self, out: &[Option<Out<'_>>]) {
        let field = |dotted: &str| {
            let index = READ.iter().position(|f| *f == dotted);
            Seen::of_out(index.and_then(|i| self.slots[i]).and_then(|slot| out.get(slot)?.as_ref()))
        };
        self.observed = Some(Observed::of(field));
    }
}

/// What one OpenAI event says about its match quality.
#[derive(Debug, PartialEq)]
pub struct Observation<'e> {
    event_type: &'e str,
    signals: [bool; SIGNALS.len()],
    hashed: u64,
    well_formed: u64,
    opted_out: bool,
    consent_sent: bool,
    /// The measures its type should carry, and which of them it does (bit `i` for `measures[i]`).
    measures: &'static [Measure],
    holds: u8,
    age_ms: Option<i64>,
}

impl<'e> Observation<'e> {
    /// Reads `event`; `consent_sent` and `age_ms` as [`Quality::observe_mapped`] takes them.
    pub fn of(event_type: &'e str, event: &Value, consent_sent: bool, age_ms: Option<i64>) -> Observation<'e> {
        let field = |dotted: &str| Seen::of_json(dotted.split('.').fold(event, |value, key| &value[key]));
        Self::read(event_type, field, consent_sent, age_ms)
    }

    /// Reads an OpenAI event from its JSON text, taking only the fields it needs from it (as the engine reads an
    /// event): the relay counts every event it delivers, and building each whole cost more than the rest of
    /// delivery. `None` for text that is not a JSON object.
    pub fn of_text(
        event_type: &'e str,
        text: &str,
        consent_sent: bool,
        age_ms: Option<i64>,
    ) -> Option<Observation<'e>> {
        let (reader, slots) = text_reader();
        let captured = reader.read_str(text).ok()?;
        let field = |dotted: &str| {
            let index = READ.iter().position(|f| *f == dotted);
            Seen::of_val(index.and_then(|i| captured.values[slots[i]].as_ref()))
        };
        Some(Self::read(event_type, field, consent_sent, age_ms))
    }

    fn read<'v>(
        event_type: &'e str,
        field: impl Fn(&str) -> Seen<'v>,
        consent_sent: bool,
        age_ms: Option<i64>,
    ) -> Observation<'e> {
        Self::of_observed(event_type, Observed::of(field), consent_sent, age_ms)
    }

    /// What an event of `event_type` that carries `observed` says; `consent_sent` and `age_ms` as
    /// [`Quality::observe_mapped`] takes them.
    pub fn of_observed(
        event_type: &'e str,
        observed: Observed,
        consent_sent: bool,
        age_ms: Option<i64>,
    ) -> Observation<'e> {
        let measures = CONVERSIONS.iter().find(|(name, _)| *name == event_type).map_or(&[][..], |(_, m)| *m);
        let holds = measures.iter().enumerate().fold(0u8, |bits, (i, m)| bits | (u8::from(observed.holds(*m)) << i));
        Observation {
            event_type,
            signals: std::array::from_fn(|index| observed.signal(index)),
            hashed: observed.0 >> 8 & 0xff,
            well_formed: observed.0 >> 16 & 0xff,
            opted_out: observed.0 >> 24 & 1 == 1,
            consent_sent,
            measures,
            holds,
            age_ms,
        }
    }
}

#[derive(Clone, Default)]
struct Tally {
    events: u64,
    signals: [u64; SIGNALS.len()],
    hashed: u64,
    well_formed: u64,
    opted_out: u64,
    /// Opted-out events whose input carried no consent state at all.
    opted_out_without_consent: u64,
    measures: BTreeMap<Measure, u64>,
    ages: AgeHistogram,
}

impl Tally {
    fn merge(&mut self, other: &Tally) {
        self.events += other.events;
        for (mine, theirs) in self.signals.iter_mut().zip(other.signals) {
            *mine += theirs;
        }
        self.hashed += other.hashed;
        self.well_formed += other.well_formed;
        self.opted_out += other.opted_out;
        self.opted_out_without_consent += other.opted_out_without_consent;
        for (measure, count) in &other.measures {
            *self.measures.entry(*measure).or_default() += count;
        }
        self.ages.merge(&other.ages);
    }
}

/// Ages in logarithmic buckets, 16 per doubling (each about 4.4 % wide), so that a tally holds a few hundred
/// counters however many events it saw, and percentiles come out within a bucket's width. Ages past OpenAI's
/// 7-day window are counted exactly besides.
#[derive(Clone, Default)]
struct AgeHistogram {
    buckets: BTreeMap<u16, u64>,
    count: u64,
    past_week: u64,
}

const BUCKETS_PER_DOUBLING: f64 = 16.0;

impl AgeHistogram {
    fn record(&mut self, age_ms: i64) {
        let age = age_ms.max(0);
        let bucket = if age < 1 { 0 } else { ((age as f64).log2() * BUCKETS_PER_DOUBLING) as u16 + 1 };
        *self.buckets.entry(bucket).or_default() += 1;
        self.count += 1;
        self.past_week += u64::from(age > crate::run::WINDOW_PAST_MS);
    }

    fn merge(&mut self, other: &AgeHistogram) {
        for (bucket, count) in &other.buckets {
            *self.buckets.entry(*bucket).or_default() += count;
        }
        self.count += other.count;
        self.past_week += other.past_week;
    }

    /// The age at quantile `q`: the middle of the bucket that holds it.
    fn quantile(&self, q: f64) -> Option<i64> {
        if self.count == 0 {
            return None;
        }
        let rank = ((self.count as f64 - 1.0) * q).round() as u64;
        let mut seen = 0;
        for (bucket, count) in &self.buckets {
            seen += count;
            if seen > rank {
                if *bucket == 0 {
                    return Some(0);
                }
                let low = 2f64.powf(f64::from(bucket - 1) / BUCKETS_PER_DOUBLING);
                let high = 2f64.powf(f64::from(*bucket) / BUCKETS_PER_DOUBLING);
                return Some(((low * high).sqrt()).round() as i64);
            }
        }
        None
    }
}

/// Match quality over a stream of outcomes.
#[derive(Clone)]
pub struct Quality {
    /// Which signals the target can carry at all (the developer-docs target has no phone).
    available: [bool; SIGNALS.len()],
    now_ms: i64,
    types: BTreeMap<String, Tally>,
    dropped: BTreeMap<String, u64>,
    rejected: BTreeMap<String, u64>,
}

impl Quality {
    /// An empty tally for events written to `target`, mapped at `now_ms`.
    pub fn new(target: &TargetSchema, now_ms: i64) -> Quality {
        let available = SIGNALS.map(|(_, fields, _)| {
            fields.iter().any(|f| target.resolve(&f.split('.').collect::<Vec<_>>(), false).is_some())
        });
        Quality { available, now_ms, types: BTreeMap::new(), dropped: BTreeMap::new(), rejected: BTreeMap::new() }
    }

    /// Counts one event: its outcome, and `input` (the event as received) to tell an absent consent state.
    pub fn observe(&mut self, input: &str, outcome: &Outcome) {
        self.observe_noted(input, outcome, None);
    }

    /// [`Quality::observe`] with what [`crate::Plan::apply_str_noting_quality`] noted of a mapped event, which
    /// spares reading its text.
    pub fn observe_noted(&mut self, input: &str, outcome: &Outcome, observed: Option<Observed>) {
        match outcome {
            Outcome::Mapped(mapped) => {
                let age = mapped.timestamp_ms.map(|time| self.now_ms.saturating_sub(time));
                let consent = consent_sent(input);
                if let Some(observed) = observed {
                    self.record(&Observation::of_observed(&mapped.event_type, observed, consent, age));
                    return;
                }
                let Ok(event) = serde_json::from_str::<Value>(&mapped.json) else { return };
                self.observe_mapped(&mapped.event_type, &event, consent, age);
            }
            Outcome::Dropped(dropped) => {
                let reason = serde_json::to_value(dropped.reason).ok().and_then(|v| v.as_str().map(str::to_string));
                self.observe_dropped(reason.as_deref().unwrap_or("other"));
            }
            Outcome::Rejected(rejected) => {
                let reason = match rejected.reason {
                    RejectReason::InvalidInput => "malformed".to_string(),
                    other => serde_json::to_value(other)
                        .ok()
                        .and_then(|v| v.as_str().map(str::to_string))
                        .unwrap_or_else(|| "other".to_string()),
                };
                self.observe_rejected(&reason);
            }
        }
    }

    /// Counts one OpenAI event: `consent_sent` tells whether its input carried any consent state, and `age_ms` is
    /// how old it was when mapped (offline) or delivered (the relay).
    pub fn observe_mapped(&mut self, event_type: &str, event: &Value, consent_sent: bool, age_ms: Option<i64>) {
        self.record(&Observation::of(event_type, event, consent_sent, age_ms));
    }

    /// Counts an event read before: one reading serves every tally it goes into.
    pub fn record(&mut self, seen: &Observation<'_>) {
        let tally = match self.types.get_mut(seen.event_type) {
            Some(tally) => tally,
            None => self.types.entry(seen.event_type.to_string()).or_default(),
        };
        tally.events += 1;
        for (count, present) in tally.signals.iter_mut().zip(seen.signals) {
            *count += u64::from(present);
        }
        tally.hashed += seen.hashed;
        tally.well_formed += seen.well_formed;
        if seen.opted_out {
            tally.opted_out += 1;
            tally.opted_out_without_consent += u64::from(!seen.consent_sent);
        }
        for (index, measure) in seen.measures.iter().enumerate() {
            *tally.measures.entry(*measure).or_default() += u64::from(seen.holds & (1 << index) != 0);
        }
        if let Some(age) = seen.age_ms {
            tally.ages.record(age);
        }
    }

    /// Counts an event a mapping dropped on purpose, by reason (`unmapped`, `identify`, …).
    pub fn observe_dropped(&mut self, reason: &str) {
        *self.dropped.entry(reason.to_string()).or_default() += 1;
    }

    /// Counts an event refused, by reason: by the mapping (`malformed`, `invalid_field`, …) or by OpenAI.
    pub fn observe_rejected(&mut self, reason: &str) {
        *self.rejected.entry(reason.to_string()).or_default() += 1;
    }

    /// Adds another tally of the same target into this one.
    pub fn merge(&mut self, other: &Quality) {
        for (name, tally) in &other.types {
            self.types.entry(name.clone()).or_default().merge(tally);
        }
        for (reason, count) in &other.dropped {
            *self.dropped.entry(reason.clone()).or_default() += count;
        }
        for (reason, count) in &other.rejected {
            *self.rejected.entry(reason.clone()).or_default() += count;
        }
    }

    /// The report so far.
    pub fn report(&self) -> QualityReport {
        let types: Vec<TypeReport> = self.types.iter().map(|(name, tally)| self.type_report(name, tally)).collect();
        let mapped: u64 = types.iter().map(|t| t.events).sum();
        let score = if mapped == 0 {
            0.0
        } else {
            round1(types.iter().map(|t| t.score * t.events as f64).sum::<f64>() / mapped as f64)
        };
        QualityReport {
            events: mapped + self.dropped.values().sum::<u64>() + self.rejected.values().sum::<u64>(),
            mapped,
            score,
            types,
            dropped: self.dropped.clone(),
            rejected: self.rejected.clone(),
        }
    }

    fn type_report(&self, name: &str, tally: &Tally) -> TypeReport {
        let share = |count: u64| if tally.events == 0 { 0.0 } else { count as f64 / tally.events as f64 };
        let mut signals = BTreeMap::new();
        let mut weighted = 0.0;
        let mut weights = 0.0;
        let mut advice = Vec::new();
        for (index, (signal, _, weight)) in SIGNALS.iter().enumerate() {
            if !self.available[index] {
                continue;
            }
            let carried = share(tally.signals[index]);
            signals.insert(signal.to_string(), round3(carried));
            weighted += weight * carried;
            weights += weight;
            if carried < ADVICE_BELOW {
                advice.push(signal_advice(signal, name, 1.0 - carried));
            }
        }
        let opted_out = share(tally.opted_out);
        let score = if weights == 0.0 { 0.0 } else { round1(10.0 * weighted / weights * (1.0 - opted_out)) };
        if opted_out > 0.0 {
            if tally.opted_out_without_consent == tally.opted_out {
                advice.push(format!(
                    "{} of {name} events are opted out because none carries a consent state: a page without a \
                     consent tool sends none, and the mapping's `consent(…)` reads an absent category as denied; \
                     send the consent state in context.consent, or change the rule if consent is given elsewhere",
                    percent(opted_out)
                ));
            } else {
                advice.push(format!(
                    "{} of {name} events are opted out (their consent category is not granted): OpenAI cannot use them \
                     for ads",
                    percent(opted_out)
                ));
            }
        }
        let mut measures = BTreeMap::new();
        for (measure, count) in &tally.measures {
            let carried = share(*count);
            measures.insert(measure.name().to_string(), round3(carried));
            if carried < ADVICE_BELOW {
                advice.push(measure_advice(*measure, name, 1.0 - carried));
            }
        }
        let hashes_well_formed = (tally.hashed > 0).then(|| round3(tally.well_formed as f64 / tally.hashed as f64));
        if hashes_well_formed.is_some_and(|s| s < 1.0) {
            advice.push(format!(
                "some hashed user fields of {name} events are not SHA-256 hex digests: pipe them through `sha256` \
                 after normalising (`normalize_email`, `e164($default_region)`)"
            ));
        }
        let ages = &tally.ages;
        TypeReport {
            event_type: name.to_string(),
            events: tally.events,
            score,
            signals,
            hashes_well_formed,
            opted_out: round3(opted_out),
            measures,
            age_p50_ms: ages.quantile(0.5),
            age_p99_ms: ages.quantile(0.99),
            older_than_7_days: round3(if ages.count == 0 { 0.0 } else { ages.past_week as f64 / ages.count as f64 }),
            advice,
        }
    }
}

/// Whether an event as received carries a consent state (`context.consent` with any category in it).
pub fn consent_sent(input: &str) -> bool {
    serde_json::from_str::<Value>(input).ok().is_some_and(|input| consent_in(&input))
}

/// [`consent_sent`] of a parsed event.
pub fn consent_in(input: &Value) -> bool {
    input["context"]["consent"].as_object().is_some_and(|c| !c.is_empty())
}

fn percent(share: f64) -> String {
    format!("{:.0} %", share * 100.0)
}

fn round1(x: f64) -> f64 {
    (x * 10.0).round() / 10.0
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

fn signal_advice(signal: &str, event_type: &str, lacking: f64) -> String {
    let lack = format!("{} of {event_type} events lack", percent(lacking));
    match signal {
        "oppref" => format!(
            "{lack} the ad click id (oppref): it is on the landing page's URL only; keep identity memory on \
             (`remember oppref for 30d`) so that the visitor's later events carry it, and map \
             `context.page.url -> oppref | url_param(\"oppref\")`"
        ),
        "email" => format!(
            "{lack} an email: send identify before checkout, or map traits.email ?? context.traits.email \
             (`| normalize_email | sha256`), and keep identity memory on (`remember user.email`)"
        ),
        "phone" => format!(
            "{lack} a phone number: map traits.phone ?? context.traits.phone \
             (`| e164($default_region) | sha256`); numbers without a country code need the right default region"
        ),
        "external_id" => format!("{lack} an external id: map `anonymousId -> user.external_id` (or userId)"),
        "ip_address" => format!(
            "{lack} the visitor's IP address: send events through the relay (it adds the connection's address) or \
             map context.ip"
        ),
        _ => format!(
            "{lack} the visitor's User-Agent: send events through the relay (it adds the request's User-Agent) or map \
             context.userAgent"
        ),
    }
}

fn measure_advice(measure: Measure, event_type: &str, lacking: f64) -> String {
    let lack = format!("{} of {event_type} events lack", percent(lacking));
    match measure {
        Measure::AmountAndCurrency => format!(
            "{lack} an amount with its currency: events without `currency` leave the amount out; send currency in \
             the event's properties or set one (`\"EUR\" -> data.currency`)"
        ),
        Measure::OrderId => format!("{lack} an order id: map `order_id -> data.order_id | to_string`"),
        Measure::Contents => {
            format!("{lack} contents: map `products[*] -> data.contents[*] {{ … }}` (or the product in `properties`)")
        }
        Measure::PlanId => format!("{lack} a plan id: map `plan_id -> data.plan_id | to_string`"),
    }
}

/// The match quality of a stream, whole and per OpenAI event type.
#[derive(Clone, Debug, Serialize)]
pub struct QualityReport {
    /// Events seen: mapped, dropped and rejected.
    pub events: u64,
    pub mapped: u64,
    /// 0 to 10: the event types' scores weighted by their events.
    pub score: f64,
    pub types: Vec<TypeReport>,
    pub dropped: BTreeMap<String, u64>,
    pub rejected: BTreeMap<String, u64>,
}

#[derive(Clone, Debug, Serialize)]
pub struct TypeReport {
    pub event_type: String,
    pub events: u64,
    /// 0 to 10: 10 × the weighted share of identity signals carried, times the share not opted out.
    pub score: f64,
    /// Per signal, the share of events carrying it.
    pub signals: BTreeMap<String, f64>,
    /// Of the hashed user fields present, the share that are SHA-256 hex digests.
    pub hashes_well_formed: Option<f64>,
    pub opted_out: f64,
    /// Conversion events: the share with amount and currency, order id, contents, plan id.
    pub measures: BTreeMap<String, f64>,
    /// How old events were when mapped (`now` minus their time).
    pub age_p50_ms: Option<i64>,
    pub age_p99_ms: Option<i64>,
    /// The share older than OpenAI's 7-day window.
    pub older_than_7_days: f64,
    pub advice: Vec<String>,
}

impl QualityReport {
    /// The report for a person: a table per event type and the advice.
    pub fn text(&self) -> String {
        let mut out =
            format!("Match quality: {:.1}/10 over {} mapped events ({} seen)\n", self.score, self.mapped, self.events);
        for t in &self.types {
            out.push_str(&format!("\n{} ({} events): {:.1}/10\n", t.event_type, t.events, t.score));
            for (signal, share) in &t.signals {
                out.push_str(&format!("  {signal:<20} {:>6.1} %\n", share * 100.0));
            }
            for (measure, share) in &t.measures {
                out.push_str(&format!("  {measure:<20} {:>6.1} %\n", share * 100.0));
            }
            out.push_str(&format!("  {:<20} {:>6.1} %\n", "opted out", t.opted_out * 100.0));
            if let Some(share) = t.hashes_well_formed {
                out.push_str(&format!("  {:<20} {:>6.1} %\n", "hashes well formed", share * 100.0));
            }
            for advice in &t.advice {
                out.push_str(&format!("  advice: {advice}\n"));
            }
        }
        let counts = |map: &BTreeMap<String, u64>| {
            map.iter().map(|(reason, n)| format!("{reason} {n}")).collect::<Vec<_>>().join(", ")
        };
        if !self.dropped.is_empty() {
            out.push_str(&format!("\ndropped: {}\n", counts(&self.dropped)));
        }
        if !self.rejected.is_empty() {
            out.push_str(&format!("rejected: {}\n", counts(&self.rejected)));
        }
        out
    }

    /// The report as Markdown: a table of shares per event type, then the advice.
    pub fn markdown(&self) -> String {
        let mut columns: Vec<String> = Vec::new();
        for t in &self.types {
            for name in t.signals.keys().chain(t.measures.keys()) {
                if !columns.contains(name) {
                    columns.push(name.clone());
                }
            }
        }
        let mut out = format!(
            "# Match quality: {:.1}/10\n\n{} mapped events of {} seen.\n\n",
            self.score, self.mapped, self.events
        );
        out.push_str(&format!("| event type | events | score | {} | opted out |\n", columns.join(" | ")));
        out.push_str(&format!("|---|---:|---:|{}---:|\n", "---:|".repeat(columns.len())));
        for t in &self.types {
            let cells: Vec<String> = columns
                .iter()
                .map(|c| match t.signals.get(c).or(t.measures.get(c)) {
                    Some(share) => format!("{:.1} %", share * 100.0),
                    None => "–".to_string(),
                })
                .collect();
            out.push_str(&format!(
                "| {} | {} | {:.1} | {} | {:.1} % |\n",
                t.event_type,
                t.events,
                t.score,
                cells.join(" | "),
                t.opted_out * 100.0
            ));
        }
        let advice: Vec<&String> = self.types.iter().flat_map(|t| &t.advice).collect();
        if !advice.is_empty() {
            out.push_str("\n## Advice\n\n");
            for line in advice {
                out.push_str(&format!("- {line}\n"));
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::run::Context;

    fn report(events: &[&str]) -> QualityReport {
        let plan = crate::presets::OPENAI_ADS.compile(&Default::default()).plan.expect("the preset compiles");
        let now = 1_795_176_000_000;
        let mut quality = Quality::new(crate::schema::target(crate::schema::DEFAULT_TARGET).expect("target"), now);
        for event in events {
            quality.observe(event, &plan.apply_str(event, &mut Context::stateless(now)));
        }
        quality.report()
    }

    const ORDER_WITH_EVERYTHING: &str = r#"{"type":"track","event":"Order Completed","messageId":"m1","anonymousId":"a1","timestamp":"2026-11-20T11:00:00Z","properties":{"order_id":"o1","revenue":10,"currency":"EUR","products":[{"product_id":"p","price":10,"quantity":1}]},"context":{"ip":"203.0.113.1","userAgent":"UA","page":{"url":"https://shop.example/t?oppref=c1"},"traits":{"email":"a@b.example","phone":"+447700900123"},"consent":{"marketing":true}}}"#;
    const BARE_ORDER: &str = r#"{"type":"track","event":"Order Completed","messageId":"m2","anonymousId":"a2","timestamp":"2026-11-20T11:00:00Z","properties":{"order_id":"o2"},"context":{"page":{"url":"https://shop.example/t"}}}"#;

    #[test]
    fn reading_an_event_from_its_text_counts_what_reading_it_whole_does() {
        let plan = crate::presets::OPENAI_ADS.compile(&Default::default()).plan.expect("the preset compiles");
        let now = 1_795_176_000_000;
        let target = crate::schema::target(crate::schema::DEFAULT_TARGET).expect("target");
        let mut events: Vec<(String, String)> = Vec::new();
        for input in [ORDER_WITH_EVERYTHING, BARE_ORDER] {
            let (outcome, observed) = plan.apply_str_noting_quality(input, &mut Context::stateless(now));
            if let Outcome::Mapped(mapped) = outcome {
                let noted = Observation::of_observed(&mapped.event_type, observed.expect("noted"), true, None);
                let read = Observation::of_text(&mapped.event_type, &mapped.json, true, None);
                assert_eq!(Some(noted), read, "noted while mapping as read from the text: {input}");
                events.push((mapped.event_type.to_string(), mapped.json));
            }
        }
        let hash = "a".repeat(64);
        for (event_type, json) in [
            (
                "order_created",
                r#"{"opt_out":false,"user":{"email":"not-a-hash","phone_number":"","external_id":null},"data":{"amount":"12","currency":5,"order_id":"","contents":[]}}"#.to_string(),
            ),
            (
                "subscription_created",
                format!(
                    r#"{{"opt_out":true,"oppref":"x","user":{{"email_sha256":"{hash}","external_id_sha256":"ABC"}},"data":{{"amount":1.5,"currency":"EUR","plan_id":0,"contents":{{"a":1}}}}}}"#
                ),
            ),
            ("items_added", r#"{"data":{"contents":[{"id":"p"}]},"user":"not an object","opt_out":"true"}"#.to_string()),
        ] {
            events.push((event_type.to_string(), json));
        }
        let (mut whole, mut text) = (Quality::new(target, now), Quality::new(target, now));
        for (index, (event_type, json)) in events.iter().enumerate() {
            let (consent, age) = (index % 2 == 0, Some(index as i64 * 1000));
            let event: Value = serde_json::from_str(json).expect("JSON");
            whole.record(&Observation::of(event_type, &event, consent, age));
            text.record(&Observation::of_text(event_type, json, consent, age).expect("an object"));
        }
        let (whole, text) =
            (serde_json::to_value(whole.report()).unwrap(), serde_json::to_value(text.report()).unwrap());
        assert_eq!(whole, text);
        assert_eq!(whole["mapped"], 5, "{whole}");
        assert!(Observation::of_text("order_created", "[1]", true, None).is_none());
    }

    #[test]
    fn age_percentiles_come_within_a_buckets_width_and_tallies_merge_to_the_whole() {
        // Ages from 10 ms to about 12 days, spread unevenly, split between two tallies.
        let ages: Vec<i64> = (1..=2000i64).map(|i| 10 + i * i * i / 8).collect();
        let (mut first, mut second, mut whole) =
            (AgeHistogram::default(), AgeHistogram::default(), AgeHistogram::default());
        for (index, age) in ages.iter().enumerate() {
            whole.record(*age);
            if index % 3 == 0 {
                first.record(*age)
            } else {
                second.record(*age)
            }
        }
        first.merge(&second);
        for q in [0.5, 0.9, 0.99] {
            let exact = ages[((ages.len() as f64 - 1.0) * q).round() as usize] as f64;
            let estimate = whole.quantile(q).expect("ages") as f64;
            assert!((estimate - exact).abs() / exact < 0.05, "q {q}: {estimate} against {exact}");
            assert_eq!(first.quantile(q), whole.quantile(q), "merged halves give the whole's answer");
        }
        assert_eq!(whole.past_week, ages.iter().filter(|&&a| a > crate::run::WINDOW_PAST_MS).count() as u64);
        assert_eq!((first.count, first.past_week), (whole.count, whole.past_week));
        assert_eq!(AgeHistogram::default().quantile(0.5), None);
    }

    #[test]
    fn a_fully_equipped_event_scores_ten_and_gets_no_advice() {
        let report = report(&[ORDER_WITH_EVERYTHING]);
        let order = &report.types[0];
        assert_eq!((order.event_type.as_str(), order.events, order.score), ("order_created", 1, 10.0));
        assert!(order.signals.values().all(|&share| share == 1.0), "{:?}", order.signals);
        assert_eq!(order.hashes_well_formed, Some(1.0));
        assert!(order.advice.is_empty(), "{:?}", order.advice);
    }

    #[test]
    fn missing_signals_lower_the_score_and_name_the_fix() {
        let report = report(&[ORDER_WITH_EVERYTHING, BARE_ORDER, r#"{"type":"identify","userId":"u"}"#]);
        let order = &report.types[0];
        assert_eq!(order.signals["email"], 0.5);
        assert_eq!(order.signals["external_id"], 1.0);
        // The bare order has no consent state: opted out, and the advice says why.
        assert_eq!(order.opted_out, 0.5);
        assert!(order
            .advice
            .iter()
            .any(|a| a.starts_with("50 % of order_created events lack an email: send identify")));
        assert!(order.advice.iter().any(|a| a.contains("none carries a consent state")), "{:?}", order.advice);
        assert_eq!(order.measures["amount_and_currency"], 0.5);
        // Signals: oppref 3 + email 3 + phone 1.5 + ip .75 + ua .75 carried by half, external_id 1 by all: 5.5 / 10;
        // half the events are opted out.
        assert_eq!(order.score, 2.8);
        assert_eq!(report.dropped["identify"], 1);
        assert_eq!(report.events, 3);
    }
}
