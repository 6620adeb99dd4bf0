"""The topology in force (file, reloads, discovery) and its reload, behind the read and rules roles."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Request

from ..tokens import Principal
from .auth import ApiError, context, require
from .body import StrictJsonRoute

router = APIRouter(prefix="/api/v1", route_class=StrictJsonRoute)


@router.get("/topology")
def topology(request: Request, who: Principal = Depends(require("read"))) -> dict[str, Any]:
    """Entities and relations in force; a scoped token sees the entities its scope covers, and no
    reload history (its diffs name every entity)."""
    ctx = context(request)
    topo = ctx.topology
    entities = [e.model_dump(mode="json") for e in topo.entities if who.covers(e.id, topo)]
    ids = {e["id"] for e in entities}
    relations = [r.model_dump() for r in topo.relations if r.source in ids and r.target in ids]
    status = getattr(ctx.topologies, "status", None)
    return {"digest": topo.digest, "entities": entities, "relations": relations,
            "reload": status() if status is not None and not who.scoped else None}


@router.post("/topology/reload")
async def reload_topology(request: Request, who: Principal = Depends(require("rules"))) -> dict[str, Any]:
    """Check the topology file now and swap it in; 422 with file:line when it is refused."""
    source = context(request).topologies
    if not hasattr(source, "reload"):
        raise ApiError(404, "this service has no topology file to reload (start rtem run with --topology)")
    result = await source.reload(actor=f"{who.name} (token)", via="api")
    if result.status == "refused":
        raise ApiError(422, "topology refused; the topology in force stays", detail=[str(result.error)])
    return result.to_dict()
