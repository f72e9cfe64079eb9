//! The subcommands: `kvpick-epp query …` asks a running picker instead of serving.

use clap::Subcommand;

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Ask a running kvpick-epp (its kvpick.v1.Index API) without routing anything.
    Query {
        /// The server's query API URL (its --query-port).
        #[arg(
            long,
            env = "KVPICK_QUERY_SERVER",
            default_value = "http://127.0.0.1:9004"
        )]
        server: String,
        /// What to ask.
        #[command(subcommand)]
        what: Query,
    },
}

/// Queries.
#[derive(Debug, Subcommand)]
pub enum Query {
    /// Each endpoint's matched blocks and scores for a prompt.
    Score {
        /// The model (or LoRA adapter) the prompt is for.
        #[arg(long)]
        model: String,
        /// The prompt as comma-separated token ids.
        #[arg(long, value_delimiter = ',', conflicts_with = "text")]
        tokens: Vec<u32>,
        /// The prompt as text.
        #[arg(long)]
        text: Option<String>,
        /// vLLM cache_salt.
        #[arg(long)]
        cache_salt: Option<String>,
        /// Only these endpoints (ip:port, comma-separated).
        #[arg(long, value_delimiter = ',')]
        candidates: Vec<String>,
    },
    /// Every endpoint with its signals, staleness and blocks held.
    Endpoints,
}
