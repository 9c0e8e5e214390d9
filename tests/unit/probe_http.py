"""An HTTP function used only by the frame's unit tests: each route fails in its own way."""

from __future__ import annotations

from pydantic import BaseModel, Field

from functions.runtime import DependencyUnavailable, NotFound, http_function


class Item(BaseModel):
    name: str = Field(min_length=1)
    count: int = Field(ge=0)


api = http_function("http-probe")


@api.get("/items/{item_id}", response_model=Item)
def read(item_id: int) -> Item:
    if item_id == 0:
        raise NotFound("no item 0", field="item_id")
    if item_id == 503:
        raise DependencyUnavailable("postgres", "connection refused")
    if item_id == 500:
        raise RuntimeError("secret internals")
    return Item(name=f"item-{item_id}", count=item_id)


@api.post("/items", response_model=Item, status_code=201)
def create(item: Item) -> Item:
    return item


probe_api = api.target
