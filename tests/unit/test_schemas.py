"""Wire schemas (``aitbc.schemas``): job submission, memory sizes, miner registration."""

from __future__ import annotations

import math
from decimal import Decimal
from typing import Any

import pytest
from pydantic import ValidationError

from aitbc.domain.jobs import Priority
from aitbc.schemas import (
    ClaimRequest,
    GpuInfo,
    Heartbeat,
    JobParams,
    JobRequest,
    MinerRegistration,
    parse_memory_gb,
)

FILE_ID = "file_" + "0123456789abcdef" * 2


def _error_types(error: ValidationError) -> set[str]:
    return {item["type"] for item in error.errors()}


# --- JobRequest -------------------------------------------------------------------------


def test_job_request_prompt_shape() -> None:
    """The 002 seed shape: prompt, model, params."""
    request = JobRequest.model_validate(
        {"prompt": "Say hello", "model": "llama3.2", "params": {"max_tokens": 32}}
    )
    assert request.text_or_file == "Say hello"
    assert request.model == "llama3.2"
    assert request.params.max_tokens == 32
    assert request.file_id is None


def test_job_request_input_shape() -> None:
    """The 000 seed shape: model, input, output_config, requirements, priority, timeout."""
    request = JobRequest.model_validate(
        {
            "model": "smollm2-135m",
            "input": "Say hello",
            "output_config": {"destination": "local", "format": "text"},
            "requirements": {"gpu_type": "a100", "gpu_count": 1, "min_vram_gb": 40},
            "priority": "high",
            "timeout_seconds": 60,
        }
    )
    assert request.text_or_file == "Say hello"
    assert request.prompt is None
    assert request.output_config.format == "text"
    assert request.requirements.gpu_type == "a100"
    assert request.requirements.min_vram_gb == 40
    assert request.priority is Priority.HIGH
    assert request.timeout_seconds == 60


def test_job_request_defaults() -> None:
    request = JobRequest.model_validate({"prompt": "hi"})
    assert request.model is None  # the coordinator's default model applies later
    assert request.priority is Priority.NORMAL
    assert request.timeout_seconds is None
    assert request.params == JobParams()
    assert request.params.max_tokens == 256
    assert request.requirements.gpu_type is None
    assert request.output_config.format == "json"


def test_job_request_both_aliases_with_the_same_text() -> None:
    request = JobRequest.model_validate({"prompt": "same", "input": "same"})
    assert request.text_or_file == "same"


@pytest.mark.parametrize(
    "body",
    [
        {"prompt": "one", "input": "two"},
        {},
        {"model": "llama3.2"},
        {"prompt": None, "input": None},
        {"prompt": ""},
        {"input": ""},
    ],
)
def test_job_request_needs_exactly_one_text(body: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        JobRequest.model_validate(body)


def test_job_request_error_messages_name_the_fields() -> None:
    with pytest.raises(ValidationError, match="'prompt' or 'input'"):
        JobRequest.model_validate({"model": "x"})
    with pytest.raises(ValidationError, match="aliases"):
        JobRequest.model_validate({"prompt": "a", "input": "b"})


@pytest.mark.parametrize(
    "body",
    [
        {"prompt": "hi", "modle": "llama3.2"},
        {"prompt": "hi", "params": {"max_token": 5}},
        {"prompt": "hi", "requirements": {"gpu": "a100"}},
        {"prompt": "hi", "output_config": {"destination": "local", "path": "out.json"}},
    ],
)
def test_job_request_rejects_unknown_fields(body: dict[str, Any]) -> None:
    with pytest.raises(ValidationError) as info:
        JobRequest.model_validate(body)
    assert "extra_forbidden" in _error_types(info.value)


@pytest.mark.parametrize(
    "body",
    [
        {"prompt": "hi", "priority": "urgent"},
        {"prompt": "hi", "timeout_seconds": 0},
        {"prompt": "hi", "params": {"max_tokens": 0}},
        {"prompt": "hi", "params": {"max_tokens": 32_769}},
        {"prompt": "hi", "params": {"temperature": 2.5}},
        {"prompt": "hi", "params": {"top_p": 0}},
        {"prompt": "hi", "params": {"seed": -1}},
        {"prompt": "hi", "params": {"stop": [""]}},
        {"prompt": "hi", "requirements": {"gpu_count": 0}},
        {"prompt": "hi", "requirements": {"min_vram_gb": -1}},
        {"prompt": "hi", "requirements": {"gpu_type": ""}},
        {"prompt": "hi", "output_config": {"destination": "s3"}},
        {"prompt": "hi", "output_config": {"format": "xml"}},
        {"prompt": "hi", "model": ""},
    ],
)
def test_job_request_rejects_bad_values(body: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        JobRequest.model_validate(body)


@pytest.mark.parametrize("priority", list(Priority))
def test_job_request_priorities(priority: Priority) -> None:
    request = JobRequest.model_validate({"prompt": "hi", "priority": priority.value})
    assert request.priority is priority


def test_file_id_from_input() -> None:
    request = JobRequest.model_validate({"input": FILE_ID})
    assert request.file_id == FILE_ID
    assert request.text_or_file == FILE_ID


@pytest.mark.parametrize(
    "text",
    [
        "file_" + "0" * 31,  # too short
        "file_" + "0" * 33,  # too long
        "file_" + "A" * 32,  # upper-case hex
        "File_" + "0" * 32,
        " " + FILE_ID,
        "please summarise " + FILE_ID,
        "file_g" + "0" * 31,
    ],
)
def test_text_that_only_looks_like_a_file_id(text: str) -> None:
    request = JobRequest.model_validate({"input": text})
    assert request.file_id is None
    assert request.text_or_file == text


def test_file_id_is_never_a_malformed_id() -> None:
    file_id = JobRequest.model_validate({"input": FILE_ID + "\n"}).file_id
    assert file_id is None or file_id == FILE_ID


def test_prompt_is_always_text_even_if_it_looks_like_a_file_id() -> None:
    assert JobRequest.model_validate({"prompt": FILE_ID}).file_id is None
    assert JobRequest.model_validate({"prompt": FILE_ID, "input": FILE_ID}).file_id is None


# --- parse_memory_gb --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "gb"),
    [
        ("24GB", 24.0),
        ("24 GB", 24.0),
        ("24 GiB", 24.0),
        ("24gib", 24.0),
        ("24gb", 24.0),
        ("24G", 24.0),
        ("24", 24.0),
        (" 24 ", 24.0),
        ("16384MB", 16.0),
        ("16384 MiB", 16.0),
        ("512M", 0.5),
        ("1TB", 1024.0),
        ("1.5 TiB", 1536.0),
        ("7.5GB", 7.5),
        ("0", 0.0),
        (24, 24.0),
        (0, 0.0),
        (7.5, 7.5),
    ],
)
def test_parse_memory_gb(value: float | str, gb: float) -> None:
    result = parse_memory_gb(value)
    assert result == gb
    assert isinstance(result, float)


@pytest.mark.parametrize(
    "value",
    [
        "",
        "   ",
        "lots",
        "GB",
        "24 XB",
        "24B",
        "24 KB",
        "24 GBs",
        "-24GB",
        "24,5GB",
        "1e3 GB",
        ".5GB",
        "24 G B",
        "NaN",
        "inf",
        -1,
        -0.5,
    ],
)
def test_parse_memory_gb_rejects(value: float | str) -> None:
    with pytest.raises(ValueError):
        parse_memory_gb(value)


@pytest.mark.parametrize("value", [math.nan, math.inf])
def test_parse_memory_gb_rejects_non_finite_numbers(value: float) -> None:
    with pytest.raises(ValueError):
        parse_memory_gb(value)


def test_gpu_info_parses_memory_text() -> None:
    assert GpuInfo.model_validate({"name": "RTX 4090", "memory": "24GB"}).memory == 24.0
    assert GpuInfo.model_validate({"name": "A100", "memory": "81920 MiB"}).memory == 80.0
    assert GpuInfo.model_validate({"name": "CPU", "memory": 0, "count": 0}).memory == 0.0
    assert GpuInfo.model_validate({}).memory is None
    assert GpuInfo.model_validate({}).count == 1


@pytest.mark.parametrize(
    "body",
    [
        {"memory": "a lot"},
        {"memory": -8},
        {"count": -1},
        {"count": 65},
        {"name": "x" * 201},
        {"vram": "24GB"},
    ],
)
def test_gpu_info_rejects(body: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        GpuInfo.model_validate(body)


# --- MinerRegistration ------------------------------------------------------------------


def _registration(**overrides: Any) -> dict[str, Any]:
    return {"miner_id": "miner-1", "capabilities": ["smollm2-135m"], **overrides}


@pytest.mark.parametrize(
    "miner_id",
    [
        "m",
        "miner-1",
        "gpu.node_7:0",
        "0x4e3f",
        "A" + "b" * 127,  # 128 characters
    ],
)
def test_miner_id_accepted(miner_id: str) -> None:
    assert MinerRegistration.model_validate(_registration(miner_id=miner_id)).miner_id == miner_id


@pytest.mark.parametrize(
    "miner_id",
    [
        "",
        "-miner",
        ".miner",
        "_miner",
        "miner 1",
        "miner/1",
        "miner?x=1",
        "minér",
        "A" + "b" * 128,  # 129 characters
        "miner\n",
    ],
)
def test_miner_id_rejected(miner_id: str) -> None:
    with pytest.raises(ValidationError) as info:
        MinerRegistration.model_validate(_registration(miner_id=miner_id))
    assert "string_pattern_mismatch" in _error_types(info.value)


def test_miner_id_pattern_is_shared_by_miner_requests() -> None:
    assert ClaimRequest.model_validate({"miner_id": "gpu.node_7:0"}).miner_id == "gpu.node_7:0"
    with pytest.raises(ValidationError):
        ClaimRequest.model_validate({"miner_id": "bad id"})


@pytest.mark.parametrize(
    "capabilities",
    [[], [""], ["smollm2-135m", ""], ["x" * 201], [f"m{i}" for i in range(101)]],
)
def test_capabilities_rejected(capabilities: list[str]) -> None:
    with pytest.raises(ValidationError):
        MinerRegistration.model_validate(_registration(capabilities=capabilities))


def test_capabilities_required() -> None:
    with pytest.raises(ValidationError) as info:
        MinerRegistration.model_validate({"miner_id": "m1"})
    assert "missing" in _error_types(info.value)


def test_registration_defaults_and_price() -> None:
    plain = MinerRegistration.model_validate(_registration())
    assert plain.price == Decimal(0)
    assert plain.gpu_info is None
    priced = MinerRegistration.model_validate(
        _registration(price=0.02, gpu_info={"name": "NVIDIA A100", "memory": "80GB", "count": 2})
    )
    assert priced.price == Decimal("0.02")
    assert priced.gpu_info is not None
    assert priced.gpu_info.memory == 80.0
    assert priced.gpu_info.count == 2


@pytest.mark.parametrize("price", [-0.01, "0.0000001", "abc"])
def test_registration_rejects_bad_prices(price: object) -> None:
    with pytest.raises(ValidationError):
        MinerRegistration.model_validate(_registration(price=price))


def test_registration_rejects_unknown_fields() -> None:
    with pytest.raises(ValidationError) as info:
        MinerRegistration.model_validate(_registration(wallet="0xabc"))
    assert "extra_forbidden" in _error_types(info.value)


def test_heartbeat_defaults_and_limits() -> None:
    beat = Heartbeat.model_validate({})
    assert beat.status == "online"
    assert beat.running_jobs is None  # omitted: renew every job the miner holds
    with pytest.raises(ValidationError):
        Heartbeat.model_validate({"status": "sleeping"})
    with pytest.raises(ValidationError):
        Heartbeat.model_validate({"utilisation": 101})
