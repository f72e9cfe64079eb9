//! Source rewrites applied to every template before it compiles:
//!
//! - transformers' `{% generation %}...{% endgeneration %}` only marks assistant spans for
//!   training masks and renders its body unchanged: an `if true` block with the same whitespace
//!   control does too.
//! - Every `{% for %}` body starts with `{% if __kvpick_tick() %}{% endif %}`, carrying the for
//!   tag's right whitespace control, so it renders the same. [`TICK`] fails once the render is
//!   cancelled ([`crate::limits`]): every iteration of every loop, over any iterable, checks
//!   whether the caller gave up, not only writes to the output.
//!
//! The scan skips comments, `{{ }}` expressions, string literals inside tags and `{% raw %}`
//! blocks, so nothing is inserted where it would change what renders.

/// The function every loop iteration calls.
pub const TICK: &str = "__kvpick_tick";

/// `source` with both rewrites.
pub fn rewrite(source: &str) -> String {
    let mut out = String::with_capacity(source.len() + 64);
    let mut rest = source;
    loop {
        let Some(pos) = ["{%", "{#", "{{"]
            .iter()
            .filter_map(|open| rest.find(open))
            .min()
        else {
            out.push_str(rest);
            return out;
        };
        out.push_str(&rest[..pos]);
        rest = &rest[pos..];
        let closer = match &rest[..2] {
            "{#" => "#}",
            "{{" => "}}",
            _ => "%}",
        };
        let Some(end) = close(rest, closer) else {
            out.push_str(rest);
            return out;
        };
        let (tag, after) = rest.split_at(end + 2);
        rest = after;
        if closer != "%}" {
            out.push_str(tag);
            continue;
        }
        let inner = &tag[2..end];
        let lead = if inner.starts_with('-') { "-" } else { "" };
        let trail = match inner.chars().last() {
            Some(c @ ('-' | '+')) => c.to_string(),
            _ => String::new(),
        };
        let body = inner.trim_matches(['-', '+']).trim();
        let word = body
            .split(|c: char| !c.is_alphanumeric() && c != '_')
            .next();
        match word {
            Some("generation") if body == "generation" => {
                out.push_str(&format!("{{%{lead} if true {trail}%}}"));
            }
            Some("endgeneration") if body == "endgeneration" => {
                out.push_str(&format!("{{%{lead} endif {trail}%}}"));
            }
            Some("for") => {
                out.push_str(tag);
                out.push_str(&format!("{{% if {TICK}() %}}{{% endif {trail}%}}"));
            }
            Some("raw") => {
                out.push_str(tag);
                let end = end_of_raw(rest);
                out.push_str(&rest[..end]);
                rest = &rest[end..];
            }
            _ => out.push_str(tag),
        }
    }
}

/// Where `closer` ends the tag opening `s` (outside string literals), as an offset into `s`.
fn close(s: &str, closer: &str) -> Option<usize> {
    let bytes = s.as_bytes();
    let mut i = 2;
    let mut quote = None;
    while i < bytes.len() {
        let c = bytes[i];
        match quote {
            Some(_) if c == b'\\' => i += 1,
            Some(q) if c == q => quote = None,
            Some(_) => {}
            None if c == b'\'' || c == b'"' => quote = Some(c),
            None if s[i..].starts_with(closer) => return Some(i),
            None => {}
        }
        i += 1;
    }
    None
}

/// The length of a raw block's body and its `{% endraw %}` tag (all of `s` when unterminated).
fn end_of_raw(s: &str) -> usize {
    let mut at = 0;
    while let Some(pos) = s[at..].find("{%") {
        let start = at + pos;
        let Some(end) = s[start..].find("%}") else {
            break;
        };
        let inner = &s[start + 2..start + end];
        if inner.trim_matches(['-', '+']).trim() == "endraw" {
            return start + end + 2;
        }
        at = start + 2;
    }
    s.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generation_tags_become_transparent_blocks() {
        let src = "a{%- generation %}b{% endgeneration -%} c";
        assert_eq!(rewrite(src), "a{%- if true %}b{% endif -%} c");
    }

    #[test]
    fn loops_tick_with_the_same_whitespace_control_and_nothing_else_changes() {
        assert_eq!(
            rewrite("{%- for m in messages -%}\n x{% endfor %}"),
            "{%- for m in messages -%}{% if __kvpick_tick() %}{% endif -%}\n x{% endfor %}"
        );
        assert_eq!(
            rewrite("{% for c in \"%}\" %}{% endfor %}"),
            "{% for c in \"%}\" %}{% if __kvpick_tick() %}{% endif %}{% endfor %}"
        );
        for untouched in [
            "{# {% for x in y %} #}",
            "{{ '{% for x in y %}' }}",
            "{% raw %}{% for x in y %}{% endraw %}{{ x }}",
            "{% if format %}{% endif %}",
        ] {
            assert_eq!(rewrite(untouched), untouched);
        }
    }
}
