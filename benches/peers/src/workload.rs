//! The workload of issue 18's comparison: 256 endpoints, ~12.8M (endpoint, block) entries from
//! ~170k `BlockStored` events; chains of 64–128 blocks of 16 tokens; one hot conversation per
//! 180 cold chains, held by 67 endpoints each to its own depth; half the cold chains behind one
//! of 64 shared 32-block system prompts (an endpoint that already holds the prompt stores only
//! the rest, with the prompt's last block as parent, as vLLM does). Engine hashes are chain
//! hashes of the content, as vLLM's are. Deterministic (splitmix64 over indices).

use std::collections::VecDeque;

/// Endpoints.
pub const ENDPOINTS: u32 = 256;
/// Tokens per block.
pub const BLOCK: usize = 16;
/// Blocks per query.
pub const QUERY_BLOCKS: usize = 128;
/// Blocks of a system prompt.
pub const PROMPT_BLOCKS: usize = 32;
/// Distinct system prompts.
pub const PROMPTS: u64 = 64;
/// Holders of a hot conversation.
pub const HOT_HOLDERS: usize = 67;
/// Cold chains per hot conversation.
const COLD_PER_HOT: u64 = 180;

/// splitmix64.
pub fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

/// One chain: its tokens (a prompt's first, if any) and engine hashes.
#[derive(Clone, Debug)]
pub struct Chain {
    pub tokens: Vec<u32>,
    pub hashes: Vec<u64>,
}

impl Chain {
    /// Blocks in the chain.
    pub fn blocks(&self) -> usize {
        self.hashes.len()
    }
}

fn block_tokens(stream: u64, block: usize, out: &mut Vec<u32>) {
    out.extend(
        (0..BLOCK as u64).map(|t| (mix(stream ^ ((block as u64) << 24) ^ t) % 151_936) as u32),
    );
}

/// Chain `id` of `blocks` blocks, behind `prompt` if any.
pub fn chain(id: u64, blocks: usize, prompt: Option<u64>) -> Chain {
    let mut tokens = Vec::with_capacity(blocks * BLOCK);
    for b in 0..blocks {
        match prompt {
            Some(p) if b < PROMPT_BLOCKS => {
                block_tokens(0x5157_0000_0000 ^ (p << 32), b, &mut tokens)
            }
            _ => block_tokens(id.wrapping_mul(0x1_0000_0001) ^ 0xC4A1, b, &mut tokens),
        }
    }
    let mut parent = 0x0E0E_0E0E_u64;
    let hashes = tokens
        .chunks_exact(BLOCK)
        .map(|c| {
            parent = c.iter().fold(mix(parent), |h, &t| mix(h ^ u64::from(t)));
            parent
        })
        .collect();
    Chain { tokens, hashes }
}

/// One event as a pod sends it.
#[derive(Clone, Debug)]
pub enum Event {
    /// Blocks stored after `parent` (`None`: from block 0).
    Store {
        ep: u32,
        parent: Option<u64>,
        hashes: Vec<u64>,
        tokens: Vec<u32>,
    },
    /// Blocks removed.
    Remove { ep: u32, hashes: Vec<u64> },
}

impl Event {
    /// Blocks it carries.
    pub fn blocks(&self) -> usize {
        match self {
            Event::Store { hashes, .. } | Event::Remove { hashes, .. } => hashes.len(),
        }
    }
}

/// The generator's state: what each endpoint holds (for churn).
#[derive(Debug)]
pub struct Fleet {
    next_chain: u64,
    /// Per endpoint: cold chains in store order, and the prompts held.
    cold: Vec<VecDeque<(u64, usize, Option<u64>)>>,
    prompts: Vec<Vec<bool>>,
    /// Chains usable as queries, by class.
    pub one_holder: Vec<(u64, usize)>,
    pub hot: Vec<(u64, usize)>,
    pub entries_hint: u64,
}

impl Default for Fleet {
    fn default() -> Self {
        Self {
            next_chain: 0,
            cold: vec![VecDeque::new(); ENDPOINTS as usize],
            prompts: vec![vec![false; PROMPTS as usize]; ENDPOINTS as usize],
            one_holder: Vec::new(),
            hot: Vec::new(),
            entries_hint: 0,
        }
    }
}

impl Fleet {
    /// The events of the next unit of the population: one cold chain, or every store of a hot
    /// conversation.
    pub fn next_population(&mut self, out: &mut Vec<Event>) {
        let id = self.next_chain;
        self.next_chain += 1;
        let len = 64 + (mix(id ^ 0x1E9) % 65) as usize;
        if id % (COLD_PER_HOT + 1) == COLD_PER_HOT {
            let c = chain(id, len, None);
            let mut eps = Vec::with_capacity(HOT_HOLDERS);
            let mut i = 0u64;
            while eps.len() < HOT_HOLDERS {
                let ep = (mix(id ^ (i << 40) ^ 0xABCD) % u64::from(ENDPOINTS)) as u32;
                if !eps.contains(&ep) {
                    eps.push(ep);
                }
                i += 1;
            }
            for (k, ep) in eps.into_iter().enumerate() {
                let depth = 1 + (mix(id ^ ((k as u64) << 32) ^ 0xDE97) % len as u64) as usize;
                self.entries_hint += depth as u64;
                out.push(Event::Store {
                    ep,
                    parent: None,
                    hashes: c.hashes[..depth].to_vec(),
                    tokens: c.tokens[..depth * BLOCK].to_vec(),
                });
            }
            self.hot.push((id, len));
        } else {
            let ep = (mix(id ^ 0x77) % u64::from(ENDPOINTS)) as u32;
            out.push(self.cold_store(ep, id, len));
        }
    }

    /// A new cold chain `id` on `ep`.
    fn cold_store(&mut self, ep: u32, id: u64, len: usize) -> Event {
        let prompt = mix(id ^ 0x9)
            .is_multiple_of(2)
            .then(|| mix(id ^ 0x99) % PROMPTS);
        let c = chain(id, len, prompt);
        self.cold[ep as usize].push_back((id, len, prompt));
        if prompt.is_none() {
            self.one_holder.push((id, len));
        }
        let from = match prompt {
            Some(p) if self.prompts[ep as usize][p as usize] => PROMPT_BLOCKS,
            Some(p) => {
                self.prompts[ep as usize][p as usize] = true;
                0
            }
            None => 0,
        };
        self.entries_hint += (len - from) as u64;
        Event::Store {
            ep,
            parent: from.checked_sub(1).map(|b| c.hashes[b]),
            hashes: c.hashes[from..].to_vec(),
            tokens: c.tokens[from * BLOCK..].to_vec(),
        }
    }

    /// Churn operation `i`: an endpoint removes its oldest cold chain (past its prompt, which
    /// its other chains share) and stores a new one.
    pub fn churn(&mut self, i: u64, out: &mut Vec<Event>) {
        let ep = (mix(i ^ 0xC0C0) % u64::from(ENDPOINTS)) as u32;
        if let Some((id, len, prompt)) = self.cold[ep as usize].pop_front() {
            let c = chain(id, len, prompt);
            let from = if prompt.is_some() { PROMPT_BLOCKS } else { 0 };
            out.push(Event::Remove {
                ep,
                hashes: c.hashes[from..].to_vec(),
            });
        }
        let id = self.next_chain;
        self.next_chain += 1;
        let len = 64 + (mix(id ^ 0x1E9) % 65) as usize;
        out.push(self.cold_store(ep, id, len));
    }

    /// Whether cold chain `id` is still held (not churned out).
    pub fn cold_alive(&self, id: u64) -> bool {
        let ep = (mix(id ^ 0x77) % u64::from(ENDPOINTS)) as usize;
        self.cold[ep].iter().any(|&(c, _, _)| c == id)
    }
}

/// The query classes.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Class {
    /// First block held by nobody.
    Miss,
    /// A cold chain without a prompt: one holder.
    One,
    /// A hot conversation: ~67 holders at their own depths.
    Hot,
    /// A system prompt then a new question: (almost) every endpoint holds 32 blocks.
    Prompt,
}

impl Class {
    pub const ALL: [Class; 4] = [Class::Miss, Class::One, Class::Hot, Class::Prompt];

    pub fn label(self) -> &'static str {
        match self {
            Class::Miss => "miss (first block unknown)",
            Class::One => "one holder",
            Class::Hot => "~67 holders at mixed depths",
            Class::Prompt => "all hold a 32-block prompt",
        }
    }
}

/// The tokens of query `i` of `class` (128 blocks: a known prefix, then new blocks).
pub fn query(fleet: &Fleet, class: Class, i: u64) -> Vec<u32> {
    let pick = |v: &[(u64, usize)], k: u64| v[(mix(k ^ 0x51) % v.len() as u64) as usize];
    let mut c = match class {
        Class::Miss => Chain {
            tokens: Vec::new(),
            hashes: Vec::new(),
        },
        Class::One => {
            let mut k = i;
            loop {
                let (id, len) = pick(&fleet.one_holder, k);
                if fleet.cold_alive(id) || k > i + 64 {
                    break chain(id, len, None);
                }
                k += 1;
            }
        }
        Class::Hot => {
            let (id, len) = pick(&fleet.hot, i);
            chain(id, len, None)
        }
        Class::Prompt => chain(0, PROMPT_BLOCKS, Some(mix(i) % PROMPTS)),
    };
    let known = c.blocks();
    for b in known..QUERY_BLOCKS {
        block_tokens(
            0xF4E5_0000_0000 ^ i.wrapping_mul(0x1000_0003),
            b,
            &mut c.tokens,
        );
    }
    c.tokens
}
