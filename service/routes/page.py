"""A page for people at `/`: the model, a generate form with its image grid, and the jobs with live progress.

The page (page.html beside this module) holds no data: its script fetches everything from
the JSON API, so the page itself is served to anyone, token or not, and shows nothing of
the service until the API answers. When the service has a token, the API's 401 makes the
page ask for it; the token stays in the tab's sessionStorage (gone when the tab closes)
and goes only to this origin, as the same Bearer header any client sends.

What keeps that token and the page safe: the server writes nothing into the page but a
fresh nonce (URL-safe characters); the script writes what it shows (class names, paths,
job messages, errors) through textContent, never as HTML; and the Content-Security-Policy
below lets nothing else run: only this response's own script and style, images from data:
URLs, requests to this origin, no framing.
"""

from __future__ import annotations

import secrets
from pathlib import Path
from string import Template

from fastapi import APIRouter
from fastapi.responses import HTMLResponse

router = APIRouter(tags=["page"])
PAGE = Template((Path(__file__).parent / "page.html").read_text(encoding="utf-8"))
POLICY = (
    "default-src 'none'; script-src 'nonce-{nonce}'; style-src 'nonce-{nonce}'; img-src data:; "
    "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)


@router.get("/", response_class=HTMLResponse)
async def page() -> HTMLResponse:
    """The page for people; its data comes from the API, with the API's token."""
    nonce = secrets.token_urlsafe(16)
    return HTMLResponse(
        PAGE.substitute(nonce=nonce),
        headers={
            "Content-Security-Policy": POLICY.format(nonce=nonce),
            "X-Content-Type-Options": "nosniff",
            "Referrer-Policy": "no-referrer",
            "Cache-Control": "no-store",
        },
    )
