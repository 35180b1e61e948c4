//! URL functions: reading one query parameter (such as the click id `oppref`) and cutting a URL down to its
//! page address.

use std::borrow::Cow;

use serde_json::Value;

use super::{arg, constant, kind, present, Arg, Category, Example, Function, Outcome, Param, Pii, Ty, Val};

pub(super) const URL_PARAM: Function = Function {
    name: "url_param",
    category: Category::Url,
    summary: "Reads one query parameter from a URL, decoded; nothing when it is absent or empty.",
    doc: r#"
        The query is the part of the URL after the first `?` and before any `#`; a `?` inside the fragment
        starts no query. Parameters are split at `&` and decoded as HTML forms encode them (`%2F` is `/`,
        `+` is a space; a malformed `%` escape is kept as written). The first parameter whose decoded name
        equals `name` exactly, case included, wins. The URL need not be absolute: `"/p?oppref=abc"` and
        `"?oppref=abc"` work too.

        A missing or null input, a URL without the parameter, and a parameter with an empty value
        (`?oppref=` or `?oppref`) all yield nothing. A value that is not a string gives up with the warning
        `expected a URL string, got …`. `name` must be a literal or a `$parameter`, and not empty.
    "#,
    input: Ty::STRING,
    params: &[Param {
        name: "name",
        ty: Ty::STRING,
        optional: false,
        constant: true,
        doc: "The parameter's name, matched exactly; the first parameter of that name counts.",
    }],
    variadic: false,
    output: Ty::STRING,
    pii: Pii::Keeps,
    source_input: None,
    examples: &[
        Example {
            input: Some("\"https://shop.example/p?utm_source=ads&oppref=abc%2F123&x=1#top\""),
            args: &["\"oppref\""],
            output: Some("\"abc/123\""),
        },
        Example {
            input: Some("\"https://shop.example/?q=red+shoes\""),
            args: &["\"q\""],
            output: Some("\"red shoes\""),
        },
        Example { input: Some("\"https://shop.example/?oppref=\""), args: &["\"oppref\""], output: None },
        Example { input: Some("\"https://shop.example/p\""), args: &["\"oppref\""], output: None },
        Example { input: Some("\"https://shop.example/?OPPREF=abc\""), args: &["\"oppref\""], output: None },
        Example { input: Some("\"https://shop.example/#?oppref=abc\""), args: &["\"oppref\""], output: None },
    ],
    check_constants: Some(check_name),
    eval: url_param,
};

pub(super) const STRIP_QUERY: Function = Function {
    name: "strip_query",
    category: Category::Url,
    summary: "Removes the query and fragment from a URL, keeping the page address.",
    doc: r#"
        Cuts the text at the first `?` or `#`, keeping scheme, host and path as written, so that query
        strings (campaign tags, click ids, search terms) do not travel with the page address. Credentials
        written into the address (`https://user:password@shop.example.com/`) are removed too: they are never
        the page's address and must not leave with it. It does not otherwise parse or validate the URL: any
        text is accepted, and text with none of these passes unchanged.

        A missing or null input yields nothing. A value that is not a string gives up with the warning
        `expected a URL string, got …`.
    "#,
    input: Ty::STRING,
    params: &[],
    variadic: false,
    output: Ty::STRING,
    pii: Pii::Keeps,
    source_input: None,
    examples: &[
        Example {
            input: Some("\"https://example.com/a?b=1#c\""),
            args: &[],
            output: Some("\"https://example.com/a\""),
        },
        Example { input: Some("\"https://example.com/a#c?d\""), args: &[], output: Some("\"https://example.com/a\"") },
        Example { input: Some("\"https://example.com/a\""), args: &[], output: Some("\"https://example.com/a\"") },
        Example { input: Some("\"/checkout?step=2\""), args: &[], output: Some("\"/checkout\"") },
        Example {
            input: Some("\"https://user:secret@shop.example.com/thanks?x=1\""),
            args: &[],
            output: Some("\"https://shop.example.com/thanks\""),
        },
    ],
    check_constants: None,
    eval: strip_query,
};

/// The query of a URL: after the first `?` and before the fragment. A `?` inside the fragment does not start a
/// query.
fn query(url: &str) -> Option<&str> {
    // Searched with the `memchr` crate, as are the pairs below: `str`'s own searches were 2 % of a run.
    let before_fragment = &url[..memchr::memchr(b'#', url.as_bytes()).unwrap_or(url.len())];
    memchr::memchr(b'?', before_fragment.as_bytes()).map(|start| &before_fragment[start + 1..])
}

fn url_input(input: Option<Val<'_>>) -> Result<Option<Cow<'_, str>>, String> {
    match present(input) {
        None => Ok(None),
        Some(Val::Str(s)) => Ok(Some(s)),
        Some(other) => Err(format!("expected a URL string, got {}", other.kind())),
    }
}

fn url_param<'a>(input: Option<Val<'a>>, args: &[Arg<'a>]) -> Outcome<'a> {
    let Some(url) = url_input(input)? else {
        return Ok(None);
    };
    let name = match arg(args, 0) {
        None => return Ok(None),
        Some(Val::Str(name)) => name,
        Some(other) => return Err(format!("expected a parameter name, got {}", other.kind())),
    };
    // The first parameter called `name`, decoded as `form_urlencoded::parse` decodes it: borrowed from the URL
    // unless decoding changed it. A key without `+` or `%` decodes to itself, so only the others are decoded
    // before comparing.
    fn find<'u>(url: &'u str, name: &str) -> Option<Cow<'u, str>> {
        let query = query(url)?;
        let mut start = 0;
        while start <= query.len() {
            let end = memchr::memchr(b'&', &query.as_bytes()[start..]).map_or(query.len(), |at| start + at);
            let pair = &query[start..end];
            start = end + 1;
            if pair.is_empty() {
                continue;
            }
            let key = &pair[..memchr::memchr(b'=', pair.as_bytes()).unwrap_or(pair.len())];
            if memchr::memchr2(b'+', b'%', key.as_bytes()).is_some() || key == name {
                // A pair holds no `&`: it parses as exactly one parameter.
                match form_urlencoded::parse(pair.as_bytes()).next() {
                    Some((key, value)) if key == name => return Some(value),
                    _ => {}
                }
            }
        }
        None
    }
    let value = match url {
        Cow::Borrowed(url) => find(url, name),
        Cow::Owned(url) => find(&url, name).map(|value| Cow::Owned(value.into_owned())),
    };
    Ok(value.filter(|value| !value.is_empty()).map(Val::Str))
}

fn strip_query<'a>(input: Option<Val<'a>>, _args: &[Arg<'a>]) -> Outcome<'a> {
    let Some(url) = url_input(input)? else {
        return Ok(None);
    };
    let end = memchr::memchr2(b'?', b'#', url.as_bytes()).unwrap_or(url.len());
    let page = match url {
        Cow::Borrowed(url) => Cow::Borrowed(&url[..end]),
        Cow::Owned(mut url) => {
            url.truncate(end);
            Cow::Owned(url)
        }
    };
    Ok(Some(Val::Str(without_credentials(page))))
}

/// The address without the `user:password@` written before its host. WHATWG's URL parser (the `url` crate, as
/// browsers read addresses) finds the credentials, so that a backslash, an `@` in a path and other tricks are read
/// the way the receiving end reads them; an address with credentials is written back as that parser writes it, one
/// without is kept byte for byte.
fn without_credentials(text: Cow<'_, str>) -> Cow<'_, str> {
    // Credentials end at an `@`; without one there are none, and the parse can be skipped.
    if memchr::memchr(b'@', text.as_bytes()).is_none() {
        return text;
    }
    match url::Url::parse(&text) {
        Ok(mut parsed) if !parsed.username().is_empty() || parsed.password().is_some() => {
            // Both only fail for URLs that cannot have credentials, which these have.
            let _ = parsed.set_username("");
            let _ = parsed.set_password(None);
            Cow::Owned(parsed[..url::Position::AfterPath].to_string())
        }
        _ => text,
    }
}

fn check_name(args: &[Option<&Value>]) -> Result<(), (usize, String)> {
    match constant(args, 0) {
        Some(Value::String(name)) if name.is_empty() => Err((0, "the parameter name is empty".to_string())),
        Some(Value::String(_)) | None => Ok(()),
        Some(other) => Err((0, format!("expected a parameter name, got {}", kind(other)))),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::super::eval_json;
    use super::*;

    fn param(url: &str, name: &str) -> Result<Option<Value>, String> {
        eval_json(&URL_PARAM, Some(json!(url)), &[Some(json!(name))])
    }

    #[test]
    fn finds_the_parameter_anywhere() {
        for url in [
            "https://s.example/?oppref=abc",
            "https://s.example/?a=1&oppref=abc",
            "https://s.example/?a=1&oppref=abc&b=2",
            "https://s.example/?a=1&oppref=abc#frag",
            "https://s.example/p?oppref=abc&oppref=second",
            "/relative/path?x&oppref=abc",
            "?oppref=abc",
        ] {
            assert_eq!(param(url, "oppref"), Ok(Some(json!("abc"))), "{url}");
        }
    }

    #[test]
    fn decodes_and_refuses_look_alikes() {
        assert_eq!(param("https://s.example/?q=a%20b+c%26d", "q"), Ok(Some(json!("a b c&d"))));
        assert_eq!(param("https://s.example/?q=%E2%82%AC", "q"), Ok(Some(json!("€"))));
        assert_eq!(param("https://s.example/?q=%ZZ", "q"), Ok(Some(json!("%ZZ"))));
        assert_eq!(param("https://s.example/?xoppref=abc", "oppref"), Ok(None));
        assert_eq!(param("https://s.example/?OPPREF=abc", "oppref"), Ok(None));
        assert_eq!(param("https://s.example/#?oppref=abc", "oppref"), Ok(None));
        assert_eq!(param("https://s.example/?oppref", "oppref"), Ok(None));
        assert_eq!(param("https://s.example/oppref=abc", "oppref"), Ok(None));
        assert_eq!(param("", "oppref"), Ok(None));
        assert_eq!(eval_json(&URL_PARAM, Some(json!("https://s.example/?a=1")), &[None]), Ok(None));
        assert!(eval_json(&URL_PARAM, Some(json!(1)), &[Some(json!("a"))]).is_err());
        assert!(eval_json(&URL_PARAM, Some(json!("?a=1")), &[Some(json!(1))]).is_err());
    }

    #[test]
    fn finds_what_form_urlencoded_finds() {
        let names = ["a", "a b", "a+b", "é", "x", "", "=", "a=b"];
        let queries = [
            "a=1&b=2",
            "&&a&a=2",
            "a+b=1&a%20b=2",
            "a%2Bb=3&a+b=4",
            "%C3%A9=5",
            "%E9=6&x=%ZZ",
            "=7&a==8",
            "a=b=9",
            "x&x=1",
            "a%3Db=10",
            "a=%",
        ];
        for query in queries {
            for name in names {
                let url = format!("https://s.example/p?{query}#frag");
                let expected = form_urlencoded::parse(query.as_bytes())
                    .find(|(key, _)| key == name)
                    .map(|(_, value)| value.into_owned())
                    .filter(|value| !value.is_empty())
                    .map(Value::String);
                assert_eq!(param(&url, name), Ok(expected), "{query} {name}");
            }
        }
    }

    proptest::proptest! {
        /// URLs with `?` and `#` before and inside a query whose keys encode alike (`a+b`, `a%20b`): the parameter
        /// found is the first one `form_urlencoded` parses under that name between the first `?` and the first `#`.
        #[test]
        fn any_query_gives_what_form_urlencoded_finds(
            before in "[ab/#?]{0,3}",
            pairs in proptest::collection::vec(
                (proptest::sample::select(vec!["a", "b", "a+b", "a%20b", "%C3%A9", "a=b", "", "x"]), "[ab=+%&#]{0,3}"),
                0..5,
            ),
            name in proptest::sample::select(vec!["a", "b", "a b", "ab", "é", ""]),
        ) {
            let pairs: Vec<String> = pairs.iter().map(|(key, value)| format!("{key}={value}")).collect();
            let url = format!("{before}?{}", pairs.join("&"));
            let before_fragment = url.split('#').next().unwrap_or_default();
            let expected = before_fragment.split_once('?').and_then(|(_, query)| {
                form_urlencoded::parse(query.as_bytes())
                    .find(|(key, _)| key == name)
                    .map(|(_, value)| value.into_owned())
                    .filter(|value| !value.is_empty())
                    .map(Value::String)
            });
            proptest::prop_assert_eq!(param(&url, name), Ok(expected));
        }
    }

    #[test]
    fn names_are_checked() {
        assert!(check_name(&[Some(&json!("oppref"))]).is_ok());
        assert!(check_name(&[Some(&json!(""))]).is_err());
        assert!(check_name(&[Some(&json!(["a"]))]).is_err());
    }

    #[test]
    fn strips_query_and_fragment() {
        let strip = |v: Value| eval_json(&STRIP_QUERY, Some(v), &[]);
        assert_eq!(strip(json!("https://example.com/a?b=1#c")), Ok(Some(json!("https://example.com/a"))));
        assert_eq!(strip(json!("https://example.com/a#c")), Ok(Some(json!("https://example.com/a"))));
        assert_eq!(strip(json!("?a")), Ok(Some(json!(""))));
        assert_eq!(strip(json!("é?ü")), Ok(Some(json!("é"))));
        assert_eq!(strip(json!(null)), Ok(None));
        assert_eq!(strip(json!("https://a:b@shop.example.com/p")), Ok(Some(json!("https://shop.example.com/p"))));
        assert_eq!(strip(json!("https://a@b@shop.example.com")), Ok(Some(json!("https://shop.example.com/"))));
        // As browsers read it: a backslash ends the host of an http(s) address, so the host is `shop.example.com`.
        assert_eq!(
            strip(json!("https://u:p@shop.example.com\\@evil.example/x")),
            Ok(Some(json!("https://shop.example.com/@evil.example/x")))
        );
        assert_eq!(strip(json!("https://:secret@shop.example.com/p")), Ok(Some(json!("https://shop.example.com/p"))));
        assert_eq!(strip(json!("https://shop.example.com/@me?x")), Ok(Some(json!("https://shop.example.com/@me"))));
        assert!(strip(json!({"href": "x"})).is_err());
    }
}
