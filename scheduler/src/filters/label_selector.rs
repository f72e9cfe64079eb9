//! Kubernetes-style label selectors, the small subset a picker config needs.
//!
//! Comma-separated requirements, all of which must hold: `key=value` (or `==`), `key!=value`,
//! `key in (a,b)`, `key notin (a,b)`, `key` (present) and `!key` (absent). As in Kubernetes,
//! `!=` and `notin` also match an endpoint without the key.

use std::collections::BTreeMap;
use std::fmt;

/// One requirement on an endpoint's labels.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Requirement {
    Equals(String, String),
    NotEquals(String, String),
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
    Exists(String),
    NotExists(String),
}

impl Requirement {
    fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        let get = |k: &String| labels.get(k).map(String::as_str);
        match self {
            Requirement::Equals(k, v) => get(k) == Some(v.as_str()),
            Requirement::NotEquals(k, v) => get(k) != Some(v.as_str()),
            Requirement::In(k, vs) => get(k).is_some_and(|l| vs.iter().any(|v| v == l)),
            Requirement::NotIn(k, vs) => !get(k).is_some_and(|l| vs.iter().any(|v| v == l)),
            Requirement::Exists(k) => labels.contains_key(k),
            Requirement::NotExists(k) => !labels.contains_key(k),
        }
    }
}

/// A conjunction of label requirements.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LabelSelector {
    requirements: Vec<Requirement>,
}

/// Why a selector string does not parse.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SelectorError(String);

impl fmt::Display for SelectorError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl LabelSelector {
    /// Parses `"key=value, key in (a,b), !key"`; the empty string selects everything.
    pub fn parse(text: &str) -> Result<Self, SelectorError> {
        if text.trim().is_empty() {
            return Ok(Self::default());
        }
        let mut requirements = Vec::new();
        for term in split_top_level(text)? {
            if term.is_empty() {
                return Err(SelectorError(format!("empty requirement in {text:?}")));
            }
            requirements.push(parse_requirement(term)?);
        }
        Ok(Self { requirements })
    }

    /// Adds `key=value` (for llm-d's `matchLabels`).
    pub fn require_equal(&mut self, key: &str, value: &str) -> Result<(), SelectorError> {
        self.requirements.push(Requirement::Equals(
            checked(key, "key")?,
            checked_value(value)?,
        ));
        Ok(())
    }

    /// Adds one of Kubernetes' `matchExpressions` (`In`, `NotIn`, `Exists`, `DoesNotExist`):
    /// the set operators need values, the others take none.
    pub fn require_expression(
        &mut self,
        key: &str,
        operator: &str,
        values: &[String],
    ) -> Result<(), SelectorError> {
        let key = checked(key, "key")?;
        let values = values
            .iter()
            .map(|v| checked(v, "value"))
            .collect::<Result<Vec<_>, _>>()?;
        let requirement = match (operator, values.is_empty()) {
            ("In", false) => Requirement::In(key, values),
            ("NotIn", false) => Requirement::NotIn(key, values),
            ("Exists", true) => Requirement::Exists(key),
            ("DoesNotExist", true) => Requirement::NotExists(key),
            ("In" | "NotIn", true) => {
                return Err(SelectorError(format!(
                    "{operator} needs at least one value"
                )));
            }
            ("Exists" | "DoesNotExist", false) => {
                return Err(SelectorError(format!("{operator} takes no values")));
            }
            _ => {
                return Err(SelectorError(format!(
                    "unknown operator {operator:?} (expected In, NotIn, Exists or DoesNotExist)"
                )));
            }
        };
        self.requirements.push(requirement);
        Ok(())
    }

    /// Whether `labels` satisfy every requirement.
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.requirements.iter().all(|r| r.matches(labels))
    }

    /// Whether it has no requirement (and so selects everything).
    pub fn is_empty(&self) -> bool {
        self.requirements.is_empty()
    }
}

/// Splits on commas outside parentheses; each piece is trimmed.
fn split_top_level(text: &str) -> Result<Vec<&str>, SelectorError> {
    let (mut depth, mut start, mut out) = (0u32, 0usize, Vec::new());
    for (i, c) in text.char_indices() {
        match c {
            '(' if depth == 0 => depth = 1,
            ')' if depth == 1 => depth = 0,
            '(' | ')' => return Err(SelectorError(format!("unbalanced parentheses in {text:?}"))),
            ',' if depth == 0 => {
                out.push(text[start..i].trim());
                start = i + 1;
            }
            _ => {}
        }
    }
    if depth != 0 {
        return Err(SelectorError(format!("unbalanced parentheses in {text:?}")));
    }
    out.push(text[start..].trim());
    Ok(out)
}

fn parse_requirement(term: &str) -> Result<Requirement, SelectorError> {
    if let Some(key) = term.strip_prefix('!') {
        return Ok(Requirement::NotExists(checked(key.trim(), "key")?));
    }
    if let Some(open) = term.find('(') {
        let Some(inner) = term[open + 1..].strip_suffix(')') else {
            return Err(bad(term));
        };
        let mut head = term[..open].split_whitespace();
        let (Some(key), Some(op), None) = (head.next(), head.next(), head.next()) else {
            return Err(bad(term));
        };
        let key = checked(key, "key")?;
        let values = inner
            .split(',')
            .map(|v| checked(v.trim(), "value"))
            .collect::<Result<Vec<_>, _>>()?;
        return match op {
            "in" => Ok(Requirement::In(key, values)),
            "notin" => Ok(Requirement::NotIn(key, values)),
            _ => Err(bad(term)),
        };
    }
    if let Some((k, v)) = term.split_once("!=") {
        return Ok(Requirement::NotEquals(
            checked(k.trim(), "key")?,
            checked_value(v.trim())?,
        ));
    }
    if let Some((k, v)) = term.split_once('=') {
        let v = v.strip_prefix('=').unwrap_or(v);
        return Ok(Requirement::Equals(
            checked(k.trim(), "key")?,
            checked_value(v.trim())?,
        ));
    }
    if term.split_whitespace().count() == 1 {
        return Ok(Requirement::Exists(checked(term, "key")?));
    }
    Err(bad(term))
}

fn bad(term: &str) -> SelectorError {
    SelectorError(format!(
        "expected \"key\", \"!key\", \"key=value\", \"key!=value\", \"key in (a,b)\" or \
         \"key notin (a,b)\", got {term:?}"
    ))
}

/// A label key or set value: non-empty, of the characters Kubernetes allows in labels.
fn checked(s: &str, what: &str) -> Result<String, SelectorError> {
    if s.is_empty() {
        return Err(SelectorError(format!("empty label {what}")));
    }
    checked_value(s).map_err(|_| SelectorError(format!("invalid label {what} {s:?}")))
}

/// A label value after `=`/`!=`: may be empty, as in Kubernetes.
fn checked_value(s: &str) -> Result<String, SelectorError> {
    if s.chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '/'))
    {
        Ok(s.to_owned())
    } else {
        Err(SelectorError(format!("invalid label value {s:?}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn sel(s: &str) -> LabelSelector {
        LabelSelector::parse(s).unwrap()
    }

    #[test]
    fn each_operator_matches_like_kubernetes() {
        let decode = labels(&[("llm-d.ai/role", "decode"), ("zone", "a")]);
        let prefill = labels(&[("llm-d.ai/role", "prefill")]);
        let bare = labels(&[]);
        let cases = [
            ("llm-d.ai/role=decode", [true, false, false]),
            ("llm-d.ai/role==decode", [true, false, false]),
            ("llm-d.ai/role!=decode", [false, true, true]),
            (
                "llm-d.ai/role in (decode, prefill-decode)",
                [true, false, false],
            ),
            ("llm-d.ai/role notin (decode)", [false, true, true]),
            ("zone", [true, false, false]),
            ("!zone", [false, true, true]),
            (
                "llm-d.ai/role in (decode,prefill), !zone",
                [false, true, false],
            ),
            ("", [true, true, true]),
        ];
        for (s, want) in cases {
            let got = [&decode, &prefill, &bare].map(|l| sel(s).matches(l));
            assert_eq!(got, want, "{s}");
        }
    }

    #[test]
    fn malformed_selectors_are_rejected_with_a_reason() {
        let err = |s: &str| LabelSelector::parse(s).unwrap_err().to_string();
        assert_eq!(err("a in (x"), "unbalanced parentheses in \"a in (x\"");
        assert_eq!(err("a,,b"), "empty requirement in \"a,,b\"");
        assert_eq!(err("a in ()"), "empty label value");
        assert_eq!(err("=x"), "empty label key");
        assert_eq!(err("a b"), bad("a b").to_string());
        assert_eq!(err("a within (x)"), bad("a within (x)").to_string());
        assert_eq!(err("a=b c"), "invalid label value \"b c\"");
        assert_eq!(err("k$=v"), "invalid label key \"k$\"");
    }

    #[test]
    fn match_labels_are_equalities() {
        let mut s = LabelSelector::default();
        assert!(s.is_empty());
        s.require_equal("role", "decode").unwrap();
        assert!(s.matches(&labels(&[("role", "decode")])));
        assert!(!s.matches(&labels(&[("role", "prefill")])));
        assert!(s.require_equal("", "x").is_err());
    }

    #[test]
    fn match_expressions_are_the_set_operators() {
        let v = |l: &[&str]| l.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let mut s = LabelSelector::default();
        s.require_expression("role", "In", &v(&["prefill", "both"]))
            .unwrap();
        s.require_expression("gpu", "DoesNotExist", &[]).unwrap();
        assert!(s.matches(&labels(&[("role", "both")])));
        assert!(!s.matches(&labels(&[("role", "both"), ("gpu", "a")])));
        assert!(!s.matches(&labels(&[("role", "decode")])));
        let err = |op: &str, values: &[&str]| {
            LabelSelector::default()
                .require_expression("k", op, &v(values))
                .unwrap_err()
                .to_string()
        };
        assert_eq!(err("In", &[]), "In needs at least one value");
        assert_eq!(err("Exists", &["x"]), "Exists takes no values");
        assert!(err("in", &["x"]).starts_with("unknown operator \"in\""));
        assert_eq!(err("NotIn", &["a b"]), "invalid label value \"a b\"");
    }

    proptest::proptest! {
        #[test]
        fn any_input_parses_or_is_refused_without_panicking(text in "[a-z!=(), ]{0,24}") {
            if let Ok(s) = LabelSelector::parse(&text) {
                s.matches(&labels(&[("a", "b")]));
            }
        }
    }
}
