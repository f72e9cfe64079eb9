//! Which inference API a request speaks, from its `:path`: the body's shape depends on it.
//!
//! vLLM serves the OpenAI completions, chat completions, Responses and embeddings APIs and
//! Anthropic's Messages API; each names its prompt differently (`prompt`, `messages`, `input`,
//! `messages` with a top-level `system`). The path is matched by its last segments, so a gateway
//! prefix (`/llm/v1/chat/completions`) or a query string does not hide it. Any other path
//! (`/tokenize`, `/v1/messages/count_tokens`, `/v1/score`, ...) is [`Api::Other`].

/// The API of a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Api {
    /// `/v1/completions`: `prompt`.
    Completions,
    /// `/v1/chat/completions`: `messages`.
    ChatCompletions,
    /// OpenAI's `/v1/responses`: `input` (a string or a list of items) and `instructions`.
    Responses,
    /// Anthropic's `/v1/messages`: `messages` of content blocks and a top-level `system`.
    Messages,
    /// `/v1/embeddings`: `input` (text or token ids); nothing is generated.
    Embeddings,
    /// Any other path, or none.
    Other,
}

impl Api {
    /// The API of a request to `path` (its query string ignored).
    pub fn from_path(path: &str) -> Self {
        let path = path.split(['?', '#']).next().unwrap_or_default();
        let path = path.trim_end_matches('/');
        // Longest suffix first: `/chat/completions` also ends in `/completions`.
        const SUFFIXES: [(&str, Api); 5] = [
            ("/chat/completions", Api::ChatCompletions),
            ("/completions", Api::Completions),
            ("/responses", Api::Responses),
            ("/messages", Api::Messages),
            ("/embeddings", Api::Embeddings),
        ];
        SUFFIXES
            .iter()
            .find(|(suffix, _)| path.ends_with(suffix))
            .map_or(Api::Other, |&(_, api)| api)
    }

    /// A stable metric label.
    pub fn label(self) -> &'static str {
        match self {
            Api::Completions => "completions",
            Api::ChatCompletions => "chat_completions",
            Api::Responses => "responses",
            Api::Messages => "messages",
            Api::Embeddings => "embeddings",
            Api::Other => "other",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_name_their_api() {
        for (path, api) in [
            ("/v1/completions", Api::Completions),
            ("/v1/chat/completions", Api::ChatCompletions),
            ("/v1/chat/completions?x=1", Api::ChatCompletions),
            ("/llm/v1/chat/completions/", Api::ChatCompletions),
            ("/v1/responses", Api::Responses),
            ("/v1/messages", Api::Messages),
            ("/v1/embeddings", Api::Embeddings),
            ("/v1/messages/count_tokens", Api::Other),
            ("/v1/responses/resp_1", Api::Other),
            ("/tokenize", Api::Other),
            ("", Api::Other),
            ("/", Api::Other),
        ] {
            assert_eq!(Api::from_path(path), api, "{path}");
        }
    }
}
