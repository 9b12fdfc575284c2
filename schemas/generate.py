"""Write the JSON Schema files of the public contract: ``python -m schemas.generate``."""

from __future__ import annotations

import json
from pathlib import Path

from pydantic import BaseModel

from schemas.messages import PaymentRegistration, WebhookEnvelope

HERE = Path(__file__).parent
FILES: dict[str, type[BaseModel]] = {
    "webhook-envelope.v1.schema.json": WebhookEnvelope,
    "payment-registration.v1.schema.json": PaymentRegistration,
}


def render(model: type[BaseModel]) -> str:
    schema = {"$schema": "https://json-schema.org/draft/2020-12/schema"}
    schema.update(model.model_json_schema(by_alias=True, mode="validation"))
    return json.dumps(schema, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def main() -> None:
    for name, model in FILES.items():
        (HERE / name).write_text(render(model), encoding="utf-8")
        print(f"wrote schemas/{name}")  # noqa: T201


if __name__ == "__main__":
    main()
