"""Wire schemas of the HTTP contract, named after the seeds (Job, JobRequest, ...).

Shared by the HTTP layer (request parsing, responses, OpenAPI) and clients. Request
models forbid unknown fields so a typo is a 422, not a silently ignored option.
"""

from __future__ import annotations

import json
import math
import re
from datetime import datetime
from decimal import Decimal
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from aitbc.domain.jobs import MAX_TEMPLATE_TOKENS, JobStatus, Priority

MINER_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$"
FILE_ID_PATTERN = re.compile(r"^file_[0-9a-f]{32}$")
MAX_MAX_TOKENS = 32_768
# The most jobs one miner may declare it runs at once.
MAX_MINER_CONCURRENCY = 1024
# The most prompt tokens a miner may declare its chat template adds around a prompt.
# A price (AIT per 1,000 units) above the whole supply can never be paid.
MAX_PRICE_AIT = 10**9


class StrictRequest(BaseModel):
    """Base of request bodies: unknown fields are errors."""

    model_config = ConfigDict(extra="forbid")

    @model_validator(mode="before")
    @classmethod
    def _no_nul(cls, data: Any) -> Any:
        problem = _bad_text(data)
        if problem:
            raise ValueError(problem)
        return data


_SURROGATE = re.compile("[\ud800-\udfff]")


def _bad_text(value: Any) -> str | None:
    """Why a string anywhere in ``value`` cannot be stored, or None (iterative: no recursion)."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            if "\x00" in item:
                return "text must not contain NUL (U+0000) characters"
            if _SURROGATE.search(item):
                return "text must not contain lone UTF-16 surrogates (U+D800-U+DFFF)"
        elif isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return None


class JobParams(StrictRequest):
    """Generation parameters."""

    max_tokens: int = Field(default=256, ge=1, le=MAX_MAX_TOKENS)
    temperature: float = Field(default=0.7, ge=0.0, le=2.0)
    top_p: float = Field(default=0.9, gt=0.0, le=1.0)
    stop: list[Annotated[str, Field(min_length=1, max_length=200)]] | None = Field(
        default=None, max_length=16
    )
    seed: int | None = Field(default=None, ge=0, le=2**32 - 1)
    mode: Literal["chat", "completion", "messages"] = Field(
        default="chat",
        description='"chat": the prompt is a user message in the model\'s chat template; '
        '"completion": the prompt is continued as plain text; "messages": the prompt is a '
        'JSON array of chat messages ({"role": "system"|"user"|"assistant", "content"}) '
        "put in the model's chat template (what the OpenAI-compatible gateway sends)",
    )


class JobRequirements(StrictRequest):
    """Hardware the job needs; omitted fields mean "any"."""

    gpu_type: str | None = Field(default=None, min_length=1, max_length=100)
    gpu_count: int | None = Field(default=None, ge=1, le=64)
    min_vram_gb: float | None = Field(default=None, ge=0, le=10_000)


class OutputConfig(StrictRequest):
    """Where and how the result is delivered: downloaded from the coordinator, as JSON or text."""

    destination: Literal["local"] = "local"
    format: Literal["json", "text"] = "json"


CHAT_ROLES = frozenset({"system", "user", "assistant"})


def check_chat_messages(prompt: str) -> None:
    """``ValueError`` unless ``prompt`` is a JSON array of chat messages, each exactly
    ``{"role": "system"|"user"|"assistant", "content": <string>}``, ending with a user
    message (what a model's chat template answers)."""
    try:
        messages = json.loads(prompt)
    except ValueError:
        raise ValueError("with mode 'messages' the prompt is a JSON array of messages") from None
    if not isinstance(messages, list) or not messages:
        raise ValueError("with mode 'messages' the prompt is a non-empty JSON array")
    for index, message in enumerate(messages):
        if (
            not isinstance(message, dict)
            or set(message) != {"role", "content"}
            or message["role"] not in CHAT_ROLES
            or not isinstance(message["content"], str)
        ):
            raise ValueError(
                f"message {index} must be exactly {{'role': 'system'|'user'|'assistant', "
                "'content': <string>}"
            )
    if messages[-1]["role"] != "user":
        raise ValueError("the last message must be the user's")


class JobRequest(StrictRequest):
    """A job submission: the union of both seed shapes (``prompt`` and ``input`` are aliases)."""

    prompt: str | None = Field(default=None, min_length=1)
    input: str | None = Field(
        default=None, min_length=1, description="The prompt text, or a file_id from POST /v1/files"
    )
    model: str | None = Field(default=None, min_length=1, max_length=200)
    params: JobParams = Field(default_factory=JobParams)
    requirements: JobRequirements = Field(default_factory=JobRequirements)
    priority: Priority = Priority.NORMAL
    timeout_seconds: int | None = Field(default=None, ge=1)
    output_config: OutputConfig = Field(default_factory=OutputConfig)
    max_price: Decimal | None = Field(
        default=None,
        ge=0,
        le=MAX_PRICE_AIT,
        decimal_places=6,
        description="AIT per 1,000 units the client accepts at most (default from the "
        "coordinator's settings): only miners posting at most this are offered the job",
    )
    trade_id: str | None = Field(
        default=None,
        max_length=64,
        pattern=r"^[A-Za-z0-9_]+$",
        description="a marketplace trade of yours: the job runs only on its miner, at its "
        "price, paid from it (no max_price then)",
    )

    @model_validator(mode="after")
    def _one_input(self) -> JobRequest:
        if self.prompt is None and self.input is None:
            raise ValueError("one of 'prompt' or 'input' is required")
        if self.prompt is not None and self.input is not None and self.prompt != self.input:
            raise ValueError("'prompt' and 'input' are aliases; give one of them")
        if self.params.mode == "messages" and self.prompt is not None:
            check_chat_messages(self.prompt)
        return self

    @property
    def text_or_file(self) -> str:
        """The prompt text, or the file id given as ``input``."""
        # The validator guarantees one of them is a non-empty string.
        return self.prompt or self.input or ""

    @property
    def file_id(self) -> str | None:
        """The file id when ``input`` names an uploaded file."""
        if self.prompt is None and self.input and FILE_ID_PATTERN.fullmatch(self.input):
            return self.input
        return None


class Usage(BaseModel):
    """Metered tokens of a finished text-generation job."""

    model_config = ConfigDict(extra="forbid")

    prompt_tokens: int = Field(ge=0, le=10_000_000)
    completion_tokens: int = Field(ge=0, le=10_000_000)


class Job(BaseModel):
    """A job as clients and miners see it."""

    job_id: str
    status: JobStatus
    model: str
    prompt: str
    input_file_id: str | None = None
    params: dict[str, Any]
    requirements: JobRequirements
    priority: Priority
    timeout_seconds: int
    output_config: OutputConfig
    progress: int
    attempts: int
    miner_id: str | None
    client_id: str
    result: str | None
    error: str | None
    error_code: str | None
    usage: Usage | None
    estimated_cost: float | None = Field(description="AIT; null while no eligible miner is online")
    estimated_time_seconds: float | None = Field(
        description="seconds; null while the model has no completed jobs to learn from"
    )
    estimate_note: str | None = Field(
        default=None,
        description="why estimated_cost is null: no online miner could take the job "
        "when it was submitted (none serves its model, or none within its max_price)",
    )
    max_price: float | None = Field(
        default=None, description="AIT per 1,000 units the client accepts at most"
    )
    held: float = Field(
        default=0.0,
        description="AIT in escrow for the job while it is unfinished (the most it can cost)",
    )
    created_at: datetime
    started_at: datetime | None
    completed_at: datetime | None
    trade_id: str | None = Field(
        default=None, description="the marketplace trade whose capacity the job runs on"
    )


class JobList(BaseModel):
    """One page of jobs."""

    jobs: list[Job]
    total: int
    has_more: bool


class ClaimRequest(StrictRequest):
    """A miner claiming a job it was offered."""

    miner_id: str = Field(pattern=MINER_ID_PATTERN)


class Signature(StrictRequest):
    """An Ed25519 signature over the canonical (RFC 8785) bytes of an object."""

    alg: Literal["ed25519"] = "ed25519"
    key_id: str = Field(pattern=r"^[0-9a-f]{16}$", description="first 16 hex of SHA-256(pubkey)")
    sig: str = Field(
        pattern=r"^[A-Za-z0-9_-]{86}$", description="base64url of the 64 bytes, no padding"
    )


class JobResult(StrictRequest):
    """A miner's completion of a job it holds."""

    miner_id: str = Field(pattern=MINER_ID_PATTERN)
    result: str
    completed_at: datetime | None = Field(
        default=None,
        description="accepted for compatibility; the coordinator records its own time",
    )
    usage: Usage | None = Field(
        default=None,
        description="tokens the miner metered; the receipt charges for these "
        "(none reported: nothing is charged)",
    )
    miner_signature: Signature | None = Field(
        default=None,
        description="required once the miner registered a public key: its signature over "
        "the canonical bytes of {job_id, provider, result_hash, units, unit_type}",
    )


class Receipt(BaseModel):
    """A signed receipt for a completed job (DESIGN.md section 3).

    Served as its RFC 8785 canonical bytes: hashing the response body gives the hash
    the ledger records.
    """

    receipt_id: str
    job_id: str
    provider: str = Field(description="the miner id")
    client: str = Field(description="the client id")
    units: int
    unit_type: Literal["tokens"]
    price: float = Field(description="AIT: units x unit_price / 1000, rounded half up")
    unit_price: float = Field(description="AIT per 1,000 units, the miner's price at claim")
    model: str
    started_at: int = Field(description="Unix seconds")
    completed_at: int = Field(description="Unix seconds")
    usage: Usage
    input_hash: str = Field(description="SHA-256 hex of the prompt's UTF-8 bytes")
    result_hash: str = Field(description="SHA-256 hex of the result's UTF-8 bytes")
    miner_signature: Signature | None = Field(
        default=None, description="present when the miner registered a key"
    )
    signature: Signature


class PublicKeyInfo(BaseModel):
    """A published Ed25519 public key and the period it could sign in."""

    key_id: str
    alg: Literal["ed25519"]
    public_key: str = Field(description="base64url of the raw 32 bytes, no padding")
    owner: str = Field(description='"coordinator" or a miner id')
    status: Literal["current", "retired"]
    valid_from: datetime
    valid_until: datetime | None


class KeyList(BaseModel):
    """``GET /v1/keys``."""

    keys: list[PublicKeyInfo]


MAX_STREAM_DELTA_CHARS = 65_536


class ProgressReport(StrictRequest):
    """How far a running job has got (0-100) and, optionally, the text generated since
    the last report (``delta``), which starts at character ``offset`` of the output
    (DESIGN.md section 9): a report sent twice, or overlapping what was taken, is taken
    once; one that skips text is a 409 ``stream_gap`` saying where to resume."""

    miner_id: str = Field(pattern=MINER_ID_PATTERN)
    progress: int = Field(ge=0, le=100)
    delta: str | None = Field(default=None, min_length=1, max_length=MAX_STREAM_DELTA_CHARS)
    offset: int | None = Field(default=None, ge=0, le=2**31 - 1)

    @model_validator(mode="after")
    def _delta_with_offset(self) -> ProgressReport:
        if (self.delta is None) != (self.offset is None):
            raise ValueError("'delta' and 'offset' go together")
        return self


class ProgressAck(BaseModel):
    """Answer to a progress report; ``should_stop`` tells the miner to abandon the job."""

    job_id: str
    status: JobStatus
    progress: int
    should_stop: bool
    streamed: int = Field(
        default=0, description="characters of the output the coordinator holds (this attempt)"
    )


class FailureReport(StrictRequest):
    """A miner giving up on a job; retryable failures put it back in the queue."""

    miner_id: str = Field(pattern=MINER_ID_PATTERN)
    error: str = Field(min_length=1, max_length=10_000)
    retryable: bool = True
    handed_back: bool = Field(
        default=False,
        description="the miner is stopping and gives the job back unfinished: it is "
        "requeued without using up one of its attempts",
    )


class GpuInfo(StrictRequest):
    """A miner's GPUs: name, memory per GPU (GB, number or text like "24GB"), count."""

    name: str | None = Field(default=None, max_length=200)
    memory: float | str | None = None
    count: int = Field(default=1, ge=0, le=64)

    @field_validator("memory")
    @classmethod
    def _memory_in_gb(cls, value: float | str | None) -> float | None:
        return None if value is None else parse_memory_gb(value)


class CpuInfo(StrictRequest):
    """A miner's CPU and memory (what a CPU-only miner computes with)."""

    model: str | None = Field(default=None, max_length=200)
    cores: int = Field(ge=1, le=4096)
    memory_gb: float | None = Field(default=None, ge=0, le=1_000_000)


def parse_memory_gb(value: float | str) -> float:
    """Memory as GB from a number or text such as "24GB", "24 GiB", "16384MB"."""
    if isinstance(value, int | float):
        if not math.isfinite(value) or value < 0:
            raise ValueError("memory must be a finite, non-negative number of GB")
        return float(value)
    match = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]+)?)\s*([GMT]i?B?)?\s*", value, re.IGNORECASE)
    if not match:
        raise ValueError(f"cannot read memory size {value!r}; use e.g. 24 or '24GB'")
    number = float(match.group(1))
    unit = (match.group(2) or "G")[0].upper()
    gb = {"M": number / 1024, "G": number, "T": number * 1024}[unit]
    if not math.isfinite(gb):
        raise ValueError(f"memory size {value!r} is too large")
    return gb


RESERVED_MINER_IDS = frozenset({"coordinator", "treasury", "escrow"})


class MinerRegistration(StrictRequest):
    """A miner announcing itself: id, models served, hardware and price."""

    @field_validator("miner_id")
    @classmethod
    def _not_reserved(cls, value: str) -> str:
        # "coordinator" owns the receipt-signing keys: a miner by that name could pass
        # its own key off as the coordinator's in GET /v1/keys.
        # A miner id is also a ledger address (DESIGN.md 3): never a client's or a
        # system account's.
        if value.lower() in RESERVED_MINER_IDS or value.lower().startswith("client_"):
            raise ValueError(f"miner id {value!r} is reserved")
        return value

    miner_id: str = Field(pattern=MINER_ID_PATTERN)
    capabilities: list[Annotated[str, Field(min_length=1, max_length=200)]] = Field(
        min_length=1, max_length=100
    )
    gpu_info: GpuInfo | None = None
    cpu_info: CpuInfo | None = None
    price: Decimal = Field(
        default=Decimal(0),
        ge=0,
        le=MAX_PRICE_AIT,
        decimal_places=6,
        description="AIT per 1,000 tokens; applies to jobs claimed after it is posted",
    )
    concurrency: int = Field(
        default=1,
        ge=1,
        le=MAX_MINER_CONCURRENCY,
        description="the most jobs the miner holds at once; a claim beyond it is 409 miner_busy",
    )
    template_tokens: (
        dict[
            Annotated[str, Field(min_length=1, max_length=200)],
            Annotated[int, Field(ge=0, le=MAX_TEMPLATE_TOKENS)],
        ]
        | None
    ) = Field(
        default=None,
        max_length=100,
        description="per model: the most prompt tokens the miner's chat template adds to "
        "a prompt's UTF-8 bytes; a receipt charges at most the prompt's bytes plus this",
    )
    public_key: str | None = Field(
        default=None,
        pattern=r"^[A-Za-z0-9_-]{43}$",
        description="Ed25519 public key (raw 32 bytes, base64url, no padding); once "
        "registered, every completion must carry the miner's signature",
    )


class MinerCredentials(BaseModel):
    """Returned once at registration: the miner's API key is never shown again."""

    miner_id: str
    api_key: str


class Heartbeat(StrictRequest):
    """A miner saying it is alive, how busy it is, and which jobs it is running."""

    status: Literal["online", "busy", "draining"] = "online"
    utilisation: float | None = Field(default=None, ge=0, le=100, description="percent")
    running_jobs: list[str] | None = Field(
        default=None,
        max_length=1024,
        description="jobs the miner is running: their leases are renewed, and only theirs "
        "(an empty or omitted list renews none)",
    )


class HeartbeatAck(BaseModel):
    """Answer to a heartbeat: jobs the miner must stop (cancelled or no longer its own)."""

    miner_id: str
    status: str
    cancelled_jobs: list[str]


class Miner(BaseModel):
    """A registered miner as the admin sees it."""

    miner_id: str
    capabilities: list[str]
    gpu_info: GpuInfo
    cpu_info: CpuInfo | None = None
    price: float
    status: str
    utilisation: float | None
    running_jobs: int
    jobs_completed: int
    registered_at: datetime
    last_heartbeat_at: datetime | None


class ClientRegistration(StrictRequest):
    """Optional name for a new client account."""

    name: str | None = Field(default=None, max_length=200)


class ClientCredentials(BaseModel):
    """Returned once at client registration: the API key is never shown again."""

    client_id: str
    api_key: str


API_KEY_ID_PATTERN = r"^[0-9a-f]{16}$"


class ApiKeyInfo(BaseModel):
    """An API key as listed: never the secret, only its ``key_id``."""

    key_id: str = Field(description="the first 16 hex digits of the SHA-256 of the key")
    role: Literal["client", "miner", "admin"]
    owner: str | None = Field(description="the client or miner id; null for admin keys")
    created_at: datetime
    revoked_at: datetime | None


class ApiKeyCreated(ApiKeyInfo):
    """A new API key: ``api_key`` is shown this once and stored only as a hash."""

    api_key: str


class ApiKeyList(BaseModel):
    """A page of API keys, oldest first."""

    keys: list[ApiKeyInfo]
    total: int
    has_more: bool


class FileInfo(BaseModel):
    """An uploaded file, usable as a job's ``input`` by its ``file_id`` until it expires."""

    file_id: str
    filename: str
    content_type: str
    size: int
    sha256: str
    created_at: datetime
    expires_at: datetime | None = Field(
        default=None, description="when the file is deleted (null: kept until deleted)"
    )


class FileList(BaseModel):
    """One page of the caller's files, newest first."""

    files: list[FileInfo]
    total: int
    has_more: bool


class AdminStats(BaseModel):
    """System figures for operators."""

    jobs_by_status: dict[str, int]
    total_jobs: int
    queue_depth: int
    running_jobs: int
    online_miners: int
    total_miners: int
    completed_last_minute: int


class RateLimitHealth(BaseModel):
    """Where rate-limit counters are kept right now."""

    # "redis": shared by every coordinator on it; "memory": this process only.
    storage: Literal["redis", "memory"]
    # True while a configured Redis does not answer and this process counts alone.
    degraded: bool
    detail: str | None = None


class Health(BaseModel):
    """Liveness, database reachability and where rate limits are counted."""

    # "degraded" (503) only when the database does not answer: rate limits counted in
    # process while Redis is away still serve, and say so in ``rate_limits``.
    status: Literal["ok", "degraded"]
    version: str
    database: Literal["ok", "error"]
    rate_limits: RateLimitHealth


class ErrorBody(BaseModel):
    """Every error response."""

    detail: str
    error_code: str
    errors: list[dict[str, Any]] | None = None


# --- money (DESIGN.md section 6) -------------------------------------------------------

Amount = Annotated[
    Decimal,
    Field(gt=0, le=10**9, decimal_places=6, description="AIT, at most 6 decimals"),
]
# A ledger address: a client id, a miner id, "treasury" or "escrow".
ADDRESS_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$"


class AssetHolding(BaseModel):
    """An off-chain balance and what open buy orders lock of it."""

    balance: float
    locked: float


class AccountBalance(BaseModel):
    """``GET /v1/accounts/me``: the caller's balance and what it has in escrow (AIT)."""

    address: str
    balance: float
    held: float = Field(description="AIT in escrow for the caller's unfinished jobs")
    locked: float = Field(
        default=0, description="AIT of the balance that open exchange orders lock"
    )
    assets: dict[str, AssetHolding] = Field(
        default_factory=dict, description="off-chain balances (a market's quote asset)"
    )


class AccountPublic(BaseModel):
    """``GET /v1/accounts/{address}``: an account's public balance (AIT)."""

    address: str
    balance: float


class TransferRequest(StrictRequest):
    """``POST /v1/transfers``: move AIT to another account.

    ``nonce`` is any integer the sender has not used before (a replay is 409). A sender
    that registered a key signs the transaction it describes (DESIGN.md section 3):
    ``{"type": "transfer", "from", "to", "amount", "fee": 0, "ref": null,
    "timestamp", "nonce"}``, so a signed transfer also names its ``timestamp``.
    """

    to: str = Field(pattern=ADDRESS_PATTERN)
    amount: Amount
    nonce: int = Field(ge=0, le=2**53 - 1)
    timestamp: int | None = Field(
        default=None, ge=0, le=2**53 - 1, description="Unix seconds; default: now"
    )
    signature: Signature | None = None


class MintRequest(StrictRequest):
    """``POST /v1/admin/mint``: create AIT for an account (admin only)."""

    address: str = Field(pattern=ADDRESS_PATTERN)
    amount: Amount


class AccountKeyRequest(StrictRequest):
    """``POST /v1/accounts/me/keys``: an Ed25519 public key that signs the account's
    transfers from now on (it replaces the previous one)."""

    public_key: str = Field(
        pattern=r"^[A-Za-z0-9_-]{43}$", description="base64url of the raw 32 bytes, no padding"
    )


class Transaction(BaseModel):
    """A ledger transaction exactly as hashed (DESIGN.md section 3)."""

    model_config = ConfigDict(extra="allow", populate_by_name=True)

    id: str
    type: str
    from_: str | None = Field(alias="from")
    to: str | None
    amount: float
    fee: float
    ref: str | None
    timestamp: int


# --- explorer (DESIGN.md section 6) -----------------------------------------------------
# What the public explorer serves. Routes build these bodies as JSON text around the
# stored canonical documents (a header, a transaction, a signed receipt), which are
# served byte for byte as they were hashed or signed; the models document the shapes.


class BlockHeader(BaseModel):
    """A block header exactly as hashed and signed (DESIGN.md section 3)."""

    height: int
    prev_hash: str
    timestamp: int = Field(description="Unix seconds")
    tx_root: str
    state_root: str
    tx_count: int
    sealer: str = Field(description="key_id of the coordinator key that signed it")


class Block(BaseModel):
    """A sealed block: ``hash`` is the SHA-256 of the header's canonical bytes and
    ``signature`` the sealer's over the same bytes."""

    height: int
    hash: str
    timestamp: datetime
    transactions: int = Field(description="how many transactions the block holds")
    header: BlockHeader
    signature: Signature


class BlockDetail(Block):
    """One block with the ids of its transactions, in block order."""

    tx_ids: list[str]


class TransactionRecord(BaseModel):
    """A transaction exactly as hashed, and where it is in the chain (both null while
    it is pending)."""

    transaction: Transaction
    block_height: int | None
    position: int | None = Field(description="its index in the block (the proof's leaf)")


class InclusionProof(BaseModel):
    """RFC 9162 inclusion proof of a transaction in its block (DESIGN.md section 3)."""

    tx_id: str
    block_height: int
    block_hash: str
    leaf_index: int
    tree_size: int
    audit_path: list[str]
    tx_root: str


class ReceiptProof(BaseModel):
    """A signed receipt (as stored) and the inclusion proof of its receipt transaction."""

    receipt: Receipt
    proof: InclusionProof


class SignedBlockHeader(BaseModel):
    """A block header and the sealer's signature over it."""

    header: BlockHeader
    signature: Signature


class ReceiptBundle(BaseModel):
    """Everything needed to check a receipt offline against pinned coordinator keys:
    the receipt's signature; its receipt transaction, exactly as hashed, whose id is
    the proof's ``tx_id`` and whose ``ref`` is the SHA-256 of the receipt's canonical
    bytes; the proof of that transaction to the block's ``tx_root``; and the block
    header's hash (the proof's ``block_hash``) and signature."""

    receipt: Receipt
    transaction: Transaction
    proof: InclusionProof
    block: SignedBlockHeader


class ReceiptSummary(BaseModel):
    """A receipt's public facts (never a prompt or a result), where it is anchored, and
    ``receipt_hash``, the SHA-256 of the signed receipt's canonical bytes (its receipt
    transaction's ``ref``)."""

    receipt_id: str
    job_id: str
    client: str
    provider: str
    model: str
    units: int
    unit_type: str
    price: float
    unit_price: float
    started_at: int = Field(description="Unix seconds")
    completed_at: int = Field(description="Unix seconds")
    input_hash: str
    result_hash: str
    receipt_hash: str
    tx_id: str | None = Field(description="its receipt transaction")
    block_height: int | None = Field(description="null while its transaction is pending")


class NetworkStats(BaseModel):
    """The seed's network figures, plus money and ledger totals (AIT)."""

    total_jobs: int
    active_miners: int = Field(description="miners taking work, heard from recently")
    total_receipts: int
    block_height: int = Field(description="the height of the last sealed block")
    total_supply: float = Field(description="AIT: every mint")
    total_fees: float = Field(description="AIT: every fee paid to treasury")
    total_miners: int
    total_transactions: int = Field(description="sealed and pending")
    pending_transactions: int


class PublicJob(BaseModel):
    """A job's public facts: no prompt, parameters, result or error text."""

    job_id: str
    status: JobStatus
    model: str
    client_id: str
    miner_id: str | None
    priority: Priority
    created_at: datetime
    started_at: datetime | None
    completed_at: datetime | None
    usage: Usage | None


class AddressDetail(BaseModel):
    """An address's balance and its recent activity, newest first."""

    address: str
    balance: float
    transaction_count: int = Field(description="transactions it is from or to")
    transactions: list[TransactionRecord]
    jobs: list[PublicJob]
    receipts: list[ReceiptSummary]
