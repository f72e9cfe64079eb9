use super::*;

fn chat(body: Value) -> Result<ChatRequest, Error> {
    chat_request(body.as_object().unwrap())
}

#[test]
fn system_blocks_join_and_tool_results_precede_their_user_turn() {
    let c = chat(json!({"model": "m", "max_tokens": 8,
        "system": [{"type": "text", "text": "x-anthropic-billing-header: cch=1"},
                   {"type": "text", "text": "Be brief. "}, {"type": "text", "text": "Rules."}],
        "messages": [
            {"role": "user", "content": "weather?"},
            {"role": "assistant", "content": [
                {"type": "thinking", "thinking": "look", "signature": "s"},
                {"type": "text", "text": "Checking."},
                {"type": "tool_use", "id": "t1", "name": "get", "input": {"city": "Oslo"}}]},
            {"role": "user", "content": [
                {"type": "tool_result", "tool_use_id": "t1",
                 "content": [{"type": "text", "text": "3 C"}, {"type": "text", "text": "rain"}]}]},
            {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": ""},
                                         {"type": "text", "text": "b"}]}],
        "tools": [{"name": "get", "input_schema": {"properties": {}}}],
        "output_config": {"effort": "high"}}))
    .unwrap();
    assert_eq!(
        c.messages,
        vec![
            json!({"role": "system", "content": "Be brief. Rules."}),
            json!({"role": "user", "content": "weather?"}),
            json!({"role": "assistant", "reasoning": "look", "content": "Checking.",
                "tool_calls": [{"id": "t1", "type": "function",
                    "function": {"name": "get", "arguments": "{\"city\":\"Oslo\"}"}}]}),
            json!({"role": "tool", "tool_call_id": "t1", "content": "3 C\nrain"}),
            json!({"role": "user", "content": [{"type": "text", "text": "a"},
                                               {"type": "text", "text": "b"}]}),
        ]
    );
    assert_eq!(
        c.tools,
        Some(vec![json!({"type": "function", "function": {"name": "get",
            "description": null, "parameters": {"properties": {}, "type": "object"}}})])
    );
    assert_eq!(c.chat_template_kwargs["reasoning_effort"], "high");
    assert_eq!(c.chat_template_kwargs["enable_thinking"], true);
    assert!(c.add_generation_prompt && !c.add_special_tokens);
}

#[test]
fn what_vllm_makes_up_or_probes_is_unsupported_and_bad_shapes_invalid() {
    for unsupported in [
        json!({"messages": [{"role": "system", "content": "x"}]}),
        json!({"messages": [{"role": "user", "content": [{"type": "image", "source": {}}]}]}),
        json!({"messages": [{"role": "assistant", "content": [{"type": "tool_use", "name": "f"}]}]}),
        json!({"messages": [], "thinking": {"type": "disabled"}}),
    ] {
        assert!(
            matches!(chat(unsupported.clone()), Err(Error::Unsupported(_))),
            "{unsupported}"
        );
    }
    for bad in [
        json!({}),
        json!({"messages": "hi"}),
        json!({"messages": [{"role": "tool", "content": "x"}]}),
        json!({"messages": [{"role": "user", "content": [{"type": "video"}]}]}),
        json!({"messages": [{"role": "user", "content": 3}]}),
        json!({"messages": [], "tools": [{"name": "f", "input_schema": []}]}),
        json!({"messages": [], "output_config": {"effort": "extreme"}}),
    ] {
        assert!(
            matches!(chat(bad.clone()), Err(Error::InvalidRequest(_))),
            "{bad}"
        );
    }
}
