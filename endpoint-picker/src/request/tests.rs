use super::*;

fn ok(body: &str) -> InferenceRequest<'_> {
    parse(body.as_bytes()).unwrap()
}

#[test]
fn completions_with_text_borrows_the_body() {
    let r = ok(r#"{"model":"m","prompt":"hello world","stream":true}"#);
    assert_eq!(r.model, "m");
    assert!(r.stream);
    assert!(matches!(
        r.prompt,
        PromptInput::Text(Cow::Borrowed("hello world"))
    ));
    assert!(matches!(r.model, Cow::Borrowed(_)));
}

#[test]
fn escaped_text_is_unescaped() {
    let r = ok(r#"{"model":"m","prompt":"a\"b\u00e9"}"#);
    assert_eq!(r.prompt, PromptInput::Text(Cow::Owned("a\"bé".into())));
}

#[test]
fn token_prompts_single_and_batched() {
    assert_eq!(
        ok(r#"{"model":"m","prompt":[1,2,3]}"#).prompt,
        PromptInput::Tokens(vec![1, 2, 3])
    );
    assert_eq!(
        ok(r#"{"model":"m","prompt":[[4,5],[6]]}"#).prompt,
        PromptInput::Tokens(vec![4, 5])
    );
    assert_eq!(
        ok(r#"{"model":"m","prompt":["first","second"]}"#).prompt,
        PromptInput::Text(Cow::Borrowed("first"))
    );
    assert_eq!(ok(r#"{"model":"m","prompt":[]}"#).prompt, PromptInput::None);
}

#[test]
fn bad_token_ids_are_rejected() {
    for body in [
        r#"{"model":"m","prompt":[1,-2]}"#,
        r#"{"model":"m","prompt":[1,4294967296]}"#,
        r#"{"model":"m","prompt":[1,"a"]}"#,
        r#"{"model":"m","prompt":[1,2.5]}"#,
        r#"{"model":"m","prompt":[1,]}"#,
        r#"{"model":"m","prompt":[01]}"#,
        r#"{"model":"m","prompt":[[1],[true]]}"#,
        r#"{"model":"m","prompt":["a",{"x":1}]}"#,
        r#"{"model":"m","prompt":[1,[2]]}"#,
    ] {
        assert!(
            matches!(parse(body.as_bytes()), Err(Error::InvalidBody(_))),
            "{body}"
        );
    }
}

#[test]
fn chat_keeps_raw_messages() {
    let body = r#"{"model":"m","messages":[{"role":"user","content":"hi"}],"cache_salt":"s"}"#;
    let r = ok(body);
    let PromptInput::Chat(raw) = r.prompt else {
        panic!("not chat")
    };
    assert_eq!(raw.get(), r#"[{"role":"user","content":"hi"}]"#);
    assert_eq!(r.cache_salt.as_deref(), Some("s"));
    assert!(!r.stream);
}

#[test]
fn missing_or_empty_model_is_its_own_error() {
    assert!(matches!(
        parse(br#"{"prompt":"x"}"#),
        Err(Error::MissingModel)
    ));
    assert!(matches!(
        parse(br#"{"model":"","prompt":"x"}"#),
        Err(Error::MissingModel)
    ));
}

#[test]
fn malformed_bodies_name_the_problem() {
    let Err(Error::InvalidBody(msg)) = parse(b"{\"model\":") else {
        panic!()
    };
    assert!(msg.contains("truncated"), "{msg}");
    let Err(Error::InvalidBody(msg)) = parse(b"\xff\xfe") else {
        panic!()
    };
    assert!(msg.contains("UTF-8"), "{msg}");
    assert!(matches!(parse(b"[1,2]"), Err(Error::InvalidBody(_))));
    assert!(matches!(
        parse(br#"{"model":7}"#),
        Err(Error::InvalidBody(_))
    ));
}

#[test]
fn unknown_fields_are_ignored() {
    let r = ok(r#"{"model":"m","max_tokens":5,"input":"x","extra":{"a":[1]}}"#);
    assert_eq!(r.prompt, PromptInput::None);
}
