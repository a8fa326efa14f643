"""The campaign's HTTP API (FastAPI): what the browser app and the scripted annotators use.

Every call but /api/health needs `Authorization: Bearer <token>`. An annotator reads and
writes only the image leased to them; admins also read statistics. Errors are a clear 4xx
with {"detail": "..."} and nothing stored. The server never runs the image encoder:
embeddings come from the embed job, the decoder runs in the client.

    app.py       create_app: the routers below, middleware (engine.campaigns.limits), the
                 refusals, the OpenAPI document, the page
    access.py    who is calling (the token's annotator, admins only), the campaign served
    bodies.py    the request bodies (bounded numbers, text that is valid Unicode)
    answers.py   what each call answers, as /openapi.json describes it (refusals included)
    leases.py    lease, the lease again, heartbeat, finish, skip (and what a lease shows)
    files.py     image bytes, embeddings, decoder files
    masks.py     accept and delete masks, skipped objects, rejected prefilled masks
    review.py    answers on proposed masks (audit, verify) and the audit's corrections
    admin.py     health, the caller (with the campaign's names and mode), statistics
"""

from engine.campaigns.api.app import create_app

__all__ = ["create_app"]
