//! Mapping cases (`engine test`): the YAML test-file format that sits beside a mapping, the runner that applies
//! the mapping to each case's events and compares the outcomes with what the file expects, the result model,
//! and its `cargo test`-style rendering. The runner is pure: it reads the mapping through a [`SourceLoader`] and
//! takes its clock from the file, so a test gives the same result on every machine and every day.
//!
//! ```yaml
//! mapping: openai_ads.map          # optional: default = the .map with the same stem beside the test file
//! now: 2026-11-20T12:00:00Z        # the clock of the timestamp window, for every case; a case may override it
//! params: {consent_category: marketing}   # parameter values; a case's `params` override and extend these
//! cases:
//!   - name: order completed with a string amount
//!     events:                      # applied in order with one identity memory per case
//!       - input: {type: track, event: Order Completed, …}
//!         expect:
//!           fields: {data.amount: 12999, data.contents[0].id: SKU-A}   # partial: only the listed fields
//!           absent: [user.email]                                        # fields that must not be sent
//!       - input: …
//!         expect: {event: {…}}                                        # exact: the whole OpenAI event
//!       - input: …
//!         expect: {dropped: unmapped}
//!       - input: …
//!         expect: {rejected: timestamp_out_of_window, field: timestamp_ms}
//! ```

mod format;
mod render;
mod report;
mod runner;

use std::collections::BTreeSet;
use std::fmt::{self, Write as _};

use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;
use serde_json::{Map, Value};

use crate::diagnostic::{self, codes, Diagnostic, RenderOptions};
use crate::explain::{explain, Explanation, Origin};
use crate::identity::MemoryStore;
use crate::personal::{looks_personal, mask};
use crate::plan::Plan;
use crate::run::{DropReason, Outcome, RejectReason, Warning};
use crate::schema::TargetSchema;
use crate::source::{SourceLoader, Sources};
use crate::{compile, CompileOptions, Compiled, Context};

/// The suffix that marks a mapping test file.
pub const TEST_FILE_SUFFIX: &str = ".test.yaml";

pub use format::*;
pub use render::*;
pub use report::*;
pub use runner::*;

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::source::MemoryLoader;

    const MAPPING: &str = r#"
routes { page -> page_viewed (contents) }
messageId -> id
to_unix_ms(timestamp) -> timestamp_ms
"web" -> action_source
context.page.url -> source_url | strip_query
context.page.url -> oppref | url_param("oppref")
remember oppref for 30d
"#;

    fn loader() -> MemoryLoader {
        MemoryLoader { files: [("site.map".to_string(), MAPPING.to_string())].into_iter().collect() }
    }

    fn run(test_file: &str) -> FileReport {
        run_file("site.test.yaml", test_file, &loader(), None)
    }

    fn parse_error(text: &str) -> FileError {
        parse("t.test.yaml", text).expect_err("the file is invalid")
    }

    const PAGE: &str = "{type: page, messageId: m, anonymousId: a, timestamp: 2026-11-19T10:00:00Z, \
                        context: {page: {url: 'https://x.example/?oppref=c1'}}}";

    #[test]
    fn unknown_keys_are_errors_with_their_line_and_column() {
        let error = parse_error("now: 2026-11-20T12:00:00Z\ncases:\n  - name: a\n    evnets: []\n");
        assert_eq!((error.line, error.column), (Some(4), Some(5)));
        assert!(error.message.contains("unknown field `evnets`"), "{error}");
        assert!(error.to_string().starts_with("t.test.yaml:4:5: unknown field `evnets`"), "{error}");
    }

    #[test]
    fn an_expectation_needs_exactly_one_outcome() {
        let file = |expect: &str| {
            format!("now: 2026-11-20T12:00:00Z\ncases:\n- name: a\n  events:\n  - input: {{}}\n    expect: {expect}\n")
        };
        assert!(parse_error(&file("{}")).message.contains("say what the event must produce"));
        assert!(parse_error(&file("{dropped: unmapped, fields: {id: x}}")).message.contains("one outcome"));
        assert!(parse_error(&file("{event: {}, absent: [id]}")).message.contains("use one"));
        assert!(parse_error(&file("{fields: {id: x}, field: id}")).message.contains("goes with `rejected`"));
        assert!(parse_error(&file("{dropped: unmaped}")).message.contains("unknown variant `unmaped`"));
        let null = parse_error(&file("{fields: {user.email: null}}"));
        assert!(null.message.contains("list the field under `absent:`"), "{null}");
        assert_eq!(null.line, Some(6));
    }

    #[test]
    fn every_case_needs_a_clock_a_unique_name_and_events() {
        assert!(parse_error("cases:\n- name: a\n  events: [{input: {}, expect: {dropped: unmapped}}]\n")
            .message
            .contains("has no `now`"));
        let twice =
            "now: 2026-11-20T12:00:00Z\ncases:\n- name: a\n  events: [{input: {}, expect: {dropped: unmapped}}]\n\
                     - name: a\n  events: [{input: {}, expect: {dropped: unmapped}}]\n";
        assert!(parse_error(twice).message.contains("two cases are named \"a\""));
        assert!(parse_error("now: 2026-11-20T12:00:00Z\ncases:\n- name: a\n  events: []\n")
            .message
            .contains("no events"));
        assert!(parse_error("now: 2026-11-20T12:00:00Z\ncases: []\n").message.contains("no cases"));
        assert!(parse_error("now: tomorrow\ncases: []\n").message.contains("RFC 3339"));
    }

    #[test]
    fn the_default_mapping_is_the_map_with_the_same_stem() {
        assert_eq!(default_mapping("mappings/openai_ads.test.yaml"), "openai_ads.map");
        assert_eq!(default_mapping("shop.test.yaml"), "shop.map");
    }

    #[test]
    fn identity_memory_lasts_for_one_case_only() {
        let later = "{type: page, messageId: m2, anonymousId: a, timestamp: 2026-11-19T11:00:00Z, \
                     context: {page: {url: 'https://x.example/thanks'}}}";
        let report = run(&format!(
            "now: 2026-11-20T12:00:00Z\ncases:\n\
             - name: remembers\n  events:\n  - {{input: {PAGE}, expect: {{fields: {{oppref: c1}}}}}}\n  - {{input: {later}, expect: {{fields: {{oppref: c1}}}}}}\n\
             - name: fresh memory\n  events:\n  - {{input: {later}, expect: {{absent: [oppref]}}}}\n"
        ));
        assert_eq!(report.mapping.as_deref(), Some("site.map"));
        assert!(report.ok(), "{:#?}", report.cases);
        assert_eq!(report.passed(), 2);
    }

    #[test]
    fn a_differing_field_names_the_rule_that_produced_it() {
        let report = run(&format!(
            "now: 2026-11-20T12:00:00Z\ncases:\n- name: a\n  events:\n  - {{input: {PAGE}, expect: {{fields: {{source_url: 'https://y.example/', id: m}}}}}}\n"
        ));
        let failures = &report.cases[0].failures;
        assert_eq!(failures.len(), 1, "{failures:#?}");
        let Mismatch::Field(diff) = &failures[0].mismatch else { panic!("{failures:#?}") };
        assert_eq!(diff.field, "source_url");
        assert_eq!(diff.expected, Some(json!("https://y.example/")));
        assert_eq!(diff.actual, Some(json!("https://x.example/")));
        assert_eq!(diff.source.as_deref(), Some("rule site.map:6:1"));
        assert_eq!(failures[0].event, Some(1));
    }

    #[test]
    fn case_params_are_compiled_with_the_files() {
        let mapping = "param region: string = \"US\"\nroutes { page -> page_viewed (contents) }\nmessageId -> id\n\
                       to_unix_ms(timestamp) -> timestamp_ms\n\"web\" -> action_source\n$region -> source_url\n";
        let loader = MemoryLoader { files: [("site.map".to_string(), mapping.to_string())].into_iter().collect() };
        let text = format!(
            "now: 2026-11-20T12:00:00Z\nparams: {{region: 'https://a.example/'}}\ncases:\n\
             - name: file params\n  events: [{{input: {PAGE}, expect: {{fields: {{source_url: 'https://a.example/'}}}}}}]\n\
             - name: case params\n  params: {{region: 'https://b.example/'}}\n  events: [{{input: {PAGE}, expect: {{fields: {{source_url: 'https://b.example/'}}}}}}]\n\
             - name: bad params\n  params: {{region: 5}}\n  events: [{{input: {PAGE}, expect: {{dropped: unmapped}}}}]\n"
        );
        let report = run_file("site.test.yaml", &text, &loader, None);
        assert!(report.cases[0].passed() && report.cases[1].passed(), "{:#?}", report.cases);
        assert!(matches!(report.cases[2].failures[0].mismatch, Mismatch::CaseMappingErrors(_)));
        let typo = format!(
            "now: 2026-11-20T12:00:00Z\ncases:\n- name: a\n  params: {{regoin: x}}\n  events: [{{input: {PAGE}, expect: {{fields: {{id: m}}}}}}]\n"
        );
        let report = run_file("site.test.yaml", &typo, &loader, None);
        let Mismatch::InvalidCase(message) = &report.cases[0].failures[0].mismatch else { panic!("{report:#?}") };
        assert!(message.contains("`regoin`") && message.contains("did you mean `region`?"), "{message}");
    }

    #[test]
    fn a_mapping_with_errors_fails_every_case_and_is_reported_once() {
        let loader =
            MemoryLoader { files: [("site.map".to_string(), "messageId -> idd\n".to_string())].into_iter().collect() };
        let text = format!(
            "now: 2026-11-20T12:00:00Z\ncases:\n- name: a\n  events: [{{input: {PAGE}, expect: {{dropped: unmapped}}}}]\n\
             - name: b\n  events: [{{input: {PAGE}, expect: {{dropped: unmapped}}}}]\n"
        );
        let report = run_file("site.test.yaml", &text, &loader, None);
        assert_eq!(report.failed(), 2);
        assert!(report.compile_errors.is_some());
        let summary = render_summary(&[report], Style::default());
        assert_eq!(summary.matches("unknown_target_field").count(), 1, "{summary}");
        assert!(summary.contains("(the same errors as shown above)"), "{summary}");
    }

    #[test]
    fn an_unreadable_mapping_makes_the_file_fail_to_run() {
        let text = "mapping: missing.map\nnow: 2026-11-20T12:00:00Z\ncases:\n- name: a\n  events: [{input: {}, expect: {dropped: unmapped}}]\n";
        let report = run(text);
        assert!(!report.ok());
        assert!(report.error.unwrap().message.contains("cannot read the mapping \"missing.map\""));
    }

    #[test]
    fn partial_expectations_compare_whole_subtrees_and_absence() {
        let actual = ordered_leaves(r#"{"id":"m","user":{"email":"h"},"data":{"contents":[{"id":"a"},{"id":"b"}]}}"#);
        assert_eq!(actual[0], ("id".to_string(), json!("m")));
        assert_eq!(actual[3].0, "data.contents[1].id");
        // A subtree: every leaf below it must match, and nothing extra may be there.
        let diffs = diff_at("data.contents", Some(&json!([{"id": "a"}])), &actual);
        assert_eq!(diffs.len(), 1);
        assert_eq!((diffs[0].field.as_str(), diffs[0].expected.as_ref()), ("data.contents[1].id", None));
        assert!(diff_at("data.contents[0].id", Some(&json!("a")), &actual).is_empty());
        // `data.contents[1]` is not below `data.contents[10]`, nor `user` below `user_agent`.
        assert!(diff_at("data.contents[10]", None, &actual).is_empty());
        assert_eq!(diff_at("user", None, &actual).len(), 1);
        // The whole event: a missing field is a difference too.
        let expected =
            json!({"id": "m", "user": {"email": "h"}, "data": {"contents": [{"id": "a"}, {"id": "b"}]}, "oppref": "x"});
        let diffs = diff_at("", Some(&expected), &actual);
        assert_eq!(diffs.len(), 1);
        assert_eq!((diffs[0].field.as_str(), diffs[0].actual.as_ref()), ("oppref", None));
    }

    #[test]
    fn field_paths_are_checked_against_the_target_schema() {
        let plan = compile("site.map", MAPPING, &loader(), &CompileOptions::default()).plan.unwrap();
        assert!(check_target_path(&plan, "data.contents[0].id").is_ok());
        assert!(check_target_path(&plan, "data.contents[*].amount").is_ok());
        assert!(
            check_target_path(&plan, "user.phone_number").is_ok(),
            "a field this mapping does not write is still a field"
        );
        assert!(check_target_path(&plan, "user").is_ok());
        let typo = check_target_path(&plan, "data.ammount").unwrap_err();
        assert!(typo.contains("did you mean `data.amount`?"), "{typo}");
        assert!(check_target_path(&plan, "data.contents[x].id").unwrap_err().contains("write indexes as `[0]`"));
    }

    #[test]
    fn values_that_look_like_email_or_phone_are_masked() {
        assert_eq!(show_value(&json!("jane@example.com")), "\"<personal: 16 characters>\"");
        assert_eq!(show_value(&json!("+44 7700 900123")), "\"<personal: 15 characters>\"");
        assert!(show_value(&json!("(415) 555-0132")).contains("<personal"));
        assert_eq!(show_value(&json!("ORD-1234")), "\"ORD-1234\"");
        assert_eq!(show_value(&json!("2026-11-19")), "\"2026-11-19\"");
        assert_eq!(show_value(&json!(12999)), "12999");
    }

    #[test]
    fn yaml_merge_keys_build_inputs_from_templates() {
        let text = format!(
            "now: 2026-11-20T12:00:00Z\ntemplates:\n  page: &page {PAGE}\ncases:\n\
             - name: merged\n  events: [{{input: {{<<: *page, messageId: m9}}, expect: {{fields: {{id: m9, oppref: c1}}}}}}]\n"
        );
        let report = run(&text);
        assert!(report.ok(), "{:#?}", report.cases);
    }
}
