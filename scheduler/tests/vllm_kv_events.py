"""vLLM's KV-event declarations, as msgspec structs, for kvpick's wire-format tests.

Declared the way `vllm/distributed/kv_events.py` declares them (`ExternalBlockHash` from
`vllm/v1/core/kv_cache_utils.py`), per schema generation vLLM has published, with the layout
(array-like or map) chosen per level. One module, imported by every test that speaks the format
from Python: the codec test (scheduler), the KV-event interop publisher (endpoint-picker) and the
fleet's reference subscriber (simulator).

Schemas: "v0" (the first release), "v1" (`medium` and `data_parallel_rank` added), "current"
(bytes-or-int hashes, LoRA name, extra keys, KV-cache groups).
"""

from typing import Any

import msgspec

ExternalBlockHash = bytes | int


def structs(batch_array: bool, event_array: bool, schema: str = "current"):
    """Returns (KVEventBatch, BlockStored, BlockRemoved, AllBlocksCleared) for the layout."""
    o = dict(omit_defaults=True, gc=False)
    if schema == "v0":

        class EventBatch(msgspec.Struct, array_like=batch_array, **o):
            ts: float
            events: list[Any]

    else:

        class EventBatch(msgspec.Struct, array_like=batch_array, **o):
            ts: float
            events: list[Any]
            data_parallel_rank: int | None = None

    class KVCacheEvent(msgspec.Struct, array_like=event_array, tag=True, **o):
        """Base class for all KV cache-related events"""

    if schema == "v0":

        class BlockStored(KVCacheEvent):
            block_hashes: list[int]
            parent_block_hash: int | None
            token_ids: list[int]
            block_size: int
            lora_id: int | None

        class BlockRemoved(KVCacheEvent):
            block_hashes: list[int]

    elif schema == "v1":

        class BlockStored(KVCacheEvent):
            block_hashes: list[int]
            parent_block_hash: int | None
            token_ids: list[int]
            block_size: int
            lora_id: int | None
            medium: str | None

        class BlockRemoved(KVCacheEvent):
            block_hashes: list[int]
            medium: str | None

    elif schema == "current":

        class BlockStored(KVCacheEvent):
            block_hashes: list[ExternalBlockHash]
            parent_block_hash: ExternalBlockHash | None
            token_ids: list[int]
            block_size: int
            lora_id: int | None
            medium: str | None
            lora_name: str | None
            extra_keys: list[tuple[Any, ...] | None] | None = None
            group_idx: int | None = None
            kv_cache_spec_kind: str | None = None
            kv_cache_spec_sliding_window: int | None = None

        class BlockRemoved(KVCacheEvent):
            block_hashes: list[ExternalBlockHash]
            medium: str | None
            group_idx: int | None = None

    else:
        raise ValueError(f"unknown schema {schema!r}")

    class AllBlocksCleared(KVCacheEvent):
        pass

    class KVEventBatch(EventBatch):
        events: list[BlockStored | BlockRemoved | AllBlocksCleared]

    return KVEventBatch, BlockStored, BlockRemoved, AllBlocksCleared
