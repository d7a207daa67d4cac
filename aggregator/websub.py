"""WebSub (https://www.w3.org/TR/websub/): the daemon as publisher and as subscriber.

Publisher: with `settings.websub_hub`, every published feed names the hub (render.py,
`PageLinks.hubs`), and after a render that changed a feed's file its URL is pinged to
the hub (`hub.mode=publish`, `hub.url=…`, the de-facto ping most hubs take): `Pinger`,
off the render's path, each request under REQUEST_SECONDS; a ping that failed is sent
again with the next change. `poll --once` pings with `ping` before it exits.

Subscriber (the daemon with `listen` set): a feed that declares a hub (update.decide
keeps the first one and the feed's self URL, the topic) gets a subscription there
(`Subscriber`), its callback `{base_url}websub/<id>` on our own HTTP server, with a
random id and secret per subscription (store.py's `websub` table). The hub verifies it
with a GET echoed only for a pending or active subscription of that topic; pushed
content (a POST with X-Hub-Signature, an HMAC of the body keyed by the secret) is
bounded by max_feed_size, checked, and stored the way a fetched body is
(`Poller.ingest_pushed`); a missing or wrong signature is answered 2xx and ignored (§8).
Leases are renewed at RENEW_AT of their length; a feed dropped from the config, or that
stops declaring its hub, is unsubscribed (best effort). While a subscription is active
the feed is polled at update.PUSHED_INTERVAL at least, as a fallback.

What comes from outside is untrusted: unknown callback ids get 404 without touching the
database (subscriptions are held in memory), challenges are echoed as plain text and at
most MAX_CHALLENGE characters, a hub's reasons are logged as one bounded line, and a hub
named by a feed on the public internet must itself be public (fetch.py's policy). No
secret is logged, shown by `status` or exported as a metric.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import re
import secrets
from collections.abc import Awaitable, Callable, Collection, Iterable, Mapping
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from aggregator import paging
from aggregator.errors import FeedError, StoreError
from aggregator.model import Config, FeedSource, FeedState, PollResult, Subscription
from aggregator.store import Store
from aggregator.text import single_line
from aggregator.timeutil import to_iso, utcnow
from aggregator.urls import redact_text, redact_url

if TYPE_CHECKING:
    from apscheduler.schedulers.asyncio import AsyncIOScheduler
    from starlette.requests import Request
    from starlette.responses import Response

    from aggregator.fetch import Fetcher
    from aggregator.pipeline import Poller

log = logging.getLogger("aggregator")

#: the callback's path under base_url: websub/<id>
CALLBACK_PATH = "websub/"
#: the lease we ask for; the hub decides (hub.lease_seconds in its verification)
LEASE = timedelta(days=10)
#: a lease is renewed when this fraction of it has passed
RENEW_AT = 0.85
#: but never sooner than this after its verification (a hub granting seconds-long leases
#: must not make us ask it again and again)
RENEW_FLOOR = timedelta(minutes=1)
#: a lease longer than this is taken as this long
MAX_LEASE = timedelta(days=365)
#: a subscription request that failed, or that the hub did not verify, is made again
#: after this long; a denied one after DENIED_RETRY
RETRY = timedelta(hours=1)
DENIED_RETRY = timedelta(days=1)
#: how often subscriptions are looked over (retries, expired leases)
CHECK_SECONDS = 60.0
#: the deadline of one request to a hub (subscribe, unsubscribe, publish)
REQUEST_SECONDS = 15.0
#: the longest hub.challenge echoed; a longer one is refused (404)
MAX_CHALLENGE = 1024
#: pushes being parsed or waiting to be, at most; more are answered 503
MAX_PENDING_PUSHES = 16
#: the HMAC digests X-Hub-Signature may name (§8)
SIGNATURE_DIGESTS: dict[str, Callable[..., Any]] = {
    "sha1": hashlib.sha1,
    "sha256": hashlib.sha256,
    "sha384": hashlib.sha384,
    "sha512": hashlib.sha512,
}
#: the published formats a hub is pinged for (the HTML page is no feed)
PINGED_EXTENSIONS = (".atom", ".rss", ".json")
#: a number a hub or client sends (lease seconds, a body's length): ASCII digits only
#: ("²".isdigit() is true, and int() refuses it), and not beyond a hundred years
_DIGITS = re.compile(r"[0-9]{1,11}")
#: when a subscription never sent its request was "asked": long ago
NEVER = datetime.min.replace(tzinfo=UTC)


# --- pure helpers ---------------------------------------------------------------------


def callback_url(base_url: str, subscription_id: str) -> str:
    return f"{base_url}{CALLBACK_PATH}{subscription_id}"


def new_subscription(feed_url: str, hub: str, topic: str) -> Subscription:
    """A subscription not yet asked for: a fresh id (the callback's name, 144 random bits)
    and secret (256 bits, under the 200 bytes §5.1 allows)."""
    return Subscription(
        id=secrets.token_urlsafe(18),
        feed_url=feed_url,
        hub=hub,
        topic=topic,
        secret=secrets.token_hex(32),
    )


def signature_ok(secret: str, body: bytes, header: str | None) -> bool:
    """Whether X-Hub-Signature (`method=hexdigest`, §8) is the HMAC of `body` keyed by
    `secret` with one of SIGNATURE_DIGESTS. Compared in constant time."""
    if not header:
        return False
    method, _, signature = header.strip().partition("=")
    digest = SIGNATURE_DIGESTS.get(method.strip().lower())
    signature = signature.strip().lower()
    # compare_digest refuses non-ASCII str: a header of other bytes is simply wrong
    if digest is None or not signature or not signature.isascii():
        return False
    expected = hmac.new(secret.encode(), body, digest).hexdigest()
    return hmac.compare_digest(expected, signature)


def renewal_due(subscription: Subscription, verified_at: datetime) -> datetime | None:
    """When to renew an active subscription's lease: at RENEW_AT of it, not sooner than
    RENEW_FLOOR after `verified_at`; None without a lease."""
    if subscription.lease_expires is None:
        return None
    lease = subscription.lease_expires - verified_at
    return verified_at + max(lease * RENEW_AT, RENEW_FLOOR)


def wanted_subscriptions(
    config: Config, states: Mapping[str, FeedState]
) -> dict[str, tuple[str, str]]:
    """Feed URL → (hub, topic) of every enabled feed whose last parsed body declared a hub."""
    wanted = {}
    for source in config.feeds:
        state = states.get(source.url)
        if source.enabled and state and state.websub_hub and state.websub_topic:
            wanted[source.url] = (state.websub_hub, state.websub_topic)
    return wanted


def feed_urls(base_url: str, names: Iterable[str]) -> list[str]:
    """The published URLs among output `names` that a hub is pinged for."""
    return sorted(
        f"{base_url}{name}"
        for name in names
        # archive pages name no hub and change whenever the first page does
        if name.endswith(PINGED_EXTENSIONS) and not paging.is_archive_name(name)
    )


def _hub_said(status: int, answer: str) -> str:
    """A hub's refusal as one bounded line."""
    reason = single_line(redact_text(answer))[:200]
    return f"HTTP {status}" + (f": {reason}" if reason else "")


# --- publisher ------------------------------------------------------------------------


async def ping(fetcher: Fetcher, hub: str, urls: Iterable[str]) -> dict[str, str]:
    """Tell `hub` that each of `urls` changed (`hub.mode=publish`); the URLs it could not
    be told about, with why."""
    failed = {}
    for url in urls:
        fields = [("hub.mode", "publish"), ("hub.url", url)]
        try:
            status, answer = await fetcher.post_form(hub, fields, timeout=REQUEST_SECONDS)
        except FeedError as error:
            failed[url] = error.message
            continue
        if not 200 <= status < 300:
            failed[url] = _hub_said(status, answer)
    return failed


class Pinger:
    """The daemon's pings after renders, one task at a time beside the loop's other work:
    a render only hands its changed files over. Failures are logged once until a ping
    succeeds again, and the URLs are pinged again with the next change."""

    def __init__(self, fetcher: Callable[[], Awaitable[Fetcher]]) -> None:
        self._fetcher = fetcher
        #: hub → feed URLs to ping
        self._pending: dict[str, set[str]] = {}
        #: hub → feed URLs whose ping failed, sent with the next change
        self._failed: dict[str, set[str]] = {}
        self._task: asyncio.Task[None] | None = None
        self.failing = False
        #: pings sent and failed since the start (for tests and the log)
        self.sent = 0

    @property
    def idle(self) -> bool:
        """No ping in flight or waiting."""
        return (self._task is None or self._task.done()) and not self._pending

    def request(self, hub: str, base_url: str, names: Collection[str]) -> None:
        urls = feed_urls(base_url, names)
        if not urls:
            return
        pending = self._pending.setdefault(hub, set())
        pending.update(urls, self._failed.pop(hub, set()))
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        while self._pending:
            hub, urls = self._pending.popitem()
            try:
                failed = await ping(await self._fetcher(), hub, sorted(urls))
            except Exception:  # a bug: logged, the daemon goes on
                log.exception("pinging the WebSub hub failed")
                failed = {url: "internal error" for url in urls}
            self.sent += len(urls)
            if failed:
                self._failed.setdefault(hub, set()).update(failed)
                if not self.failing:
                    url, why = next(iter(sorted(failed.items())))
                    log.warning(
                        "WebSub hub %s: ping for %s failed: %s (retried with the next change)",
                        redact_url(hub),
                        url,
                        why,
                    )
                self.failing = True
            elif self.failing:
                log.info("WebSub hub %s: pinged again", redact_url(hub))
                self.failing = False

    async def close(self, timeout: float) -> None:
        """Let a ping in flight finish within `timeout`, else cancel it."""
        task = self._task
        if task is not None and not task.done():
            try:
                await asyncio.wait_for(asyncio.shield(task), timeout)
            except (TimeoutError, asyncio.CancelledError):
                task.cancel()


# --- subscriber -----------------------------------------------------------------------


class Subscriber:
    """The daemon's WebSub subscriptions: requests to hubs, the callback endpoint, lease
    renewals. Subscriptions live in the store and, for the endpoint, in `by_id`.

    `on_pushed(source, result)` is called after pushed content was stored."""

    def __init__(
        self,
        poller: Poller,
        scheduler: AsyncIOScheduler,
        config: Config,
        on_pushed: Callable[[FeedSource, PollResult], None],
    ) -> None:
        self.poller = poller
        self.scheduler = scheduler
        self.config = config
        self.on_pushed = on_pushed
        self.by_id: dict[str, Subscription] = {}
        self._background: set[asyncio.Task[Any]] = set()
        self._pushes = 0
        #: ids of subscriptions with a request in flight
        self._requesting: set[str] = set()
        #: the stored subscriptions are loaded (`start`): polls may change them from then
        self._started = False

    # --- life cycle -------------------------------------------------------------------

    async def start(self) -> None:
        """Load the stored subscriptions, then subscribe and unsubscribe as the feeds'
        stored states say (`sync`); and check them every CHECK_SECONDS."""
        now = utcnow()
        for subscription in await self.poller.db.run(Store.subscriptions):
            self.by_id[subscription.id] = subscription
            if subscription.state == "active":
                if subscription.lease_expires and subscription.lease_expires > now:
                    self.poller.pushed_feeds.add(subscription.feed_url)
                    self._schedule_renewal(subscription, now)
        self._started = True
        self.scheduler.add_job(
            self.check, "interval", seconds=CHECK_SECONDS, id="websub-check", replace_existing=True
        )
        await self.sync(self.config, await self.poller.db.run(Store.feed_states))

    def configure(self, config: Config, states: Mapping[str, FeedState]) -> None:
        """A reloaded config: `sync` beside the reload, not in its way."""
        self.config = config
        self._spawn(self.sync(config, states))

    async def close(self, timeout: float) -> None:
        if self._background:
            await asyncio.wait(set(self._background), timeout=timeout)
        for task in self._background:
            task.cancel()

    def _spawn(self, work: Awaitable[Any]) -> None:
        async def run() -> None:
            try:
                await work
            except StoreError as e:
                log.error("WebSub: %s", e)
            except Exception:
                log.exception("WebSub: internal error")

        task = asyncio.create_task(run())
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def _save(self, subscription: Subscription) -> None:
        self.by_id[subscription.id] = subscription
        self._spawn(self.poller.db.run(Store.put_subscription, subscription))

    def _forget(self, subscription: Subscription) -> None:
        self.by_id.pop(subscription.id, None)
        if self._of_feed(subscription.feed_url) is None:
            self.poller.pushed_feeds.discard(subscription.feed_url)
        job = self.scheduler.get_job(f"websub-renew:{subscription.id}")
        if job is not None:
            job.remove()
        self._spawn(self.poller.db.run(Store.delete_subscription, subscription.id))

    def _of_feed(self, feed_url: str) -> Subscription | None:
        return next(
            (
                s
                for s in self.by_id.values()
                if s.feed_url == feed_url and s.state != "unsubscribing"
            ),
            None,
        )

    # --- what to subscribe to -----------------------------------------------------------

    async def sync(self, config: Config, states: Mapping[str, FeedState]) -> None:
        """Subscribe to the hubs the config's feeds declare, and unsubscribe the rest."""
        self.config = config
        if not self._started:
            return
        wanted = wanted_subscriptions(config, states)
        for subscription in list(self.by_id.values()):
            if subscription.state == "unsubscribing":
                continue
            if wanted.get(subscription.feed_url) != (subscription.hub, subscription.topic):
                await self._unsubscribe(subscription)
        for feed_url, (hub, topic) in wanted.items():
            if self._of_feed(feed_url) is None:
                await self._subscribe(feed_url, hub, topic)

    def after_poll(self, source: FeedSource, state: FeedState | None) -> None:
        """`feed_polled` beside the poll, not in its way."""
        self._spawn(self.feed_polled(source, state))

    async def feed_polled(self, source: FeedSource, state: FeedState | None) -> None:
        """After a poll: subscribe when the feed declares a new hub or topic, unsubscribe
        when it declares none any more."""
        if state is None or not source.enabled or not self._started:
            return  # `start` looks at every feed's stored state
        current = self._of_feed(source.url)
        wanted = (state.websub_hub, state.websub_topic)
        if current is not None and (current.hub, current.topic) == wanted:
            return
        if current is not None:
            await self._unsubscribe(current)
        if state.websub_hub and state.websub_topic:
            await self._subscribe(source.url, state.websub_hub, state.websub_topic)

    async def check(self) -> None:
        """Every CHECK_SECONDS: expired leases end the push; requests that failed, were
        never verified or were denied are made again after RETRY (DENIED_RETRY)."""
        now = utcnow()
        for subscription in list(self.by_id.values()):
            # never asked (saved as pending, then the request failed or the daemon
            # stopped): due at once, not never
            asked = subscription.requested_at or NEVER
            if subscription.state == "unsubscribing":
                if now - asked > RETRY:
                    self._forget(subscription)  # the hub never confirmed: its lease ends
            elif subscription.state == "active":
                expires = subscription.lease_expires
                if expires is not None and expires <= now:
                    log.info("%s: WebSub lease expired", self._name(subscription))
                    self.poller.pushed_feeds.discard(subscription.feed_url)
                    self._save(replace(subscription, state="pending"))
                    await self._request(subscription, "subscribe")
            elif now - asked > (DENIED_RETRY if subscription.state == "denied" else RETRY):
                await self._request(subscription, "subscribe")

    # --- requests to hubs -----------------------------------------------------------------

    async def _subscribe(self, feed_url: str, hub: str, topic: str) -> None:
        subscription = new_subscription(feed_url, hub, topic)
        self._save(subscription)  # before asking: the hub may verify at once
        await self._request(subscription, "subscribe")

    async def _unsubscribe(self, subscription: Subscription) -> None:
        self.poller.pushed_feeds.discard(subscription.feed_url)
        if subscription.state == "denied":
            self._forget(subscription)
            return
        self._save(replace(subscription, state="unsubscribing"))
        await self._request(subscription, "unsubscribe")

    async def _request(self, subscription: Subscription, mode: str) -> None:
        """Ask the hub (§5.1); it answers 202 and verifies with a GET on the callback."""
        if subscription.id in self._requesting:
            return
        self._requesting.add(subscription.id)
        try:
            error = await self._post(subscription, mode)
        finally:
            self._requesting.discard(subscription.id)
        current = self.by_id.get(subscription.id)
        if current is None:
            return
        name = self._name(current)
        if error is None:
            log.info("%s: WebSub %s requested at %s", name, mode, redact_url(current.hub))
            self._save(replace(current, requested_at=utcnow(), error=None))
        elif mode == "unsubscribe":
            log.info(
                "%s: WebSub unsubscribe at %s failed: %s", name, redact_url(current.hub), error
            )
            self._forget(current)  # best effort: its lease ends anyway
        else:
            log.warning(
                "%s: WebSub subscription at %s failed: %s; retrying in %s",
                name,
                redact_url(current.hub),
                error,
                RETRY,
            )
            self._save(replace(current, requested_at=utcnow(), error=error))

    async def _post(self, subscription: Subscription, mode: str) -> str | None:
        """The request; None when the hub took it, else why not."""
        fields = [
            ("hub.mode", mode),
            ("hub.topic", subscription.topic),
            ("hub.callback", callback_url(self.config.settings.base_url, subscription.id)),
        ]
        if mode == "subscribe":
            fields += [
                ("hub.lease_seconds", str(int(LEASE.total_seconds()))),
                ("hub.secret", subscription.secret),
            ]
        try:
            fetcher = await self.poller.fetcher()
            # a feed on the public internet may not send us to the private network
            public_only = await fetcher.is_public_origin(subscription.feed_url)
            status, answer = await fetcher.post_form(
                subscription.hub, fields, public_only=public_only, timeout=REQUEST_SECONDS
            )
        except FeedError as error:
            return error.message
        return None if 200 <= status < 300 else _hub_said(status, answer)

    def _schedule_renewal(self, subscription: Subscription, verified_at: datetime) -> None:
        due = renewal_due(subscription, verified_at)
        if due is None:
            return
        self.scheduler.add_job(
            self._renew,
            "date",
            run_date=due,
            args=[subscription.id],
            id=f"websub-renew:{subscription.id}",
            replace_existing=True,
            misfire_grace_time=None,
        )

    async def _renew(self, subscription_id: str) -> None:
        subscription = self.by_id.get(subscription_id)
        if subscription is not None and subscription.state == "active":
            await self._request(subscription, "subscribe")

    def _name(self, subscription: Subscription) -> str:
        source = next((f for f in self.config.feeds if f.url == subscription.feed_url), None)
        return source.shown_name if source else redact_url(subscription.feed_url)

    # --- the callback ---------------------------------------------------------------------

    async def endpoint(self, request: Request) -> Response:
        """GET: verification of intent (§5.3) or denial (§5.2); POST: content (§7)."""
        from starlette.responses import PlainTextResponse, Response

        subscription = self.by_id.get(request.path_params.get("subscription_id", ""))
        if subscription is None:
            return PlainTextResponse("not found\n", status_code=404)
        if request.method == "POST":
            status = await self._receive(subscription, request)
            return Response(status_code=status)
        params = request.query_params
        mode = params.get("hub.mode", "")
        if params.get("hub.topic") != subscription.topic:
            return PlainTextResponse("not found\n", status_code=404)
        if mode == "denied":
            if subscription.state in ("pending", "active"):
                self._denied(subscription, params.get("hub.reason", ""))
                return Response(status_code=200)
            return PlainTextResponse("not found\n", status_code=404)
        challenge = params.get("hub.challenge", "")
        if not challenge or len(challenge) > MAX_CHALLENGE or not challenge.isprintable():
            return PlainTextResponse("not found\n", status_code=404)
        if mode == "subscribe" and subscription.state in ("pending", "active"):
            self._verified(subscription, params.get("hub.lease_seconds"))
        elif mode == "unsubscribe" and subscription.state == "unsubscribing":
            log.info("%s: WebSub unsubscribed", self._name(subscription))
            self._forget(subscription)
        else:
            return PlainTextResponse("not found\n", status_code=404)
        # echoed as given (§5.3): never sniffed as a page, whatever the hub sent
        headers = {"Cache-Control": "no-store", "X-Content-Type-Options": "nosniff"}
        return PlainTextResponse(challenge, headers=headers)

    def _verified(self, subscription: Subscription, lease_seconds: str | None) -> None:
        now = utcnow()
        lease = LEASE
        if lease_seconds and _DIGITS.fullmatch(lease_seconds.strip()):
            lease = min(timedelta(seconds=int(lease_seconds)), MAX_LEASE)
        active = replace(subscription, state="active", lease_expires=now + lease, error=None)
        if subscription.state != "active":
            log.info(
                "%s: WebSub subscription verified by %s (lease %s)",
                self._name(subscription),
                redact_url(subscription.hub),
                lease,
            )
        self._save(active)
        self.poller.pushed_feeds.add(subscription.feed_url)
        self._schedule_renewal(active, now)

    def _denied(self, subscription: Subscription, reason: str) -> None:
        why = single_line(redact_text(reason))[:200] or "no reason given"
        log.warning(
            "%s: WebSub hub %s denied the subscription: %s; asking again in %s",
            self._name(subscription),
            redact_url(subscription.hub),
            why,
            DENIED_RETRY,
        )
        self.poller.pushed_feeds.discard(subscription.feed_url)
        self._save(replace(subscription, state="denied", error=f"denied: {why}"))

    async def _receive(self, subscription: Subscription, request: Request) -> int:
        """A push: 413 over max_feed_size, 503 when too many wait, 404 for a subscription
        not active; else 202, and the body is stored if its signature is right (§8: a
        wrong or missing one is acknowledged and ignored)."""
        from starlette.requests import ClientDisconnect

        if subscription.state != "active":
            return 404
        limit = self.config.settings.max_feed_size
        declared = request.headers.get("content-length", "")
        if _DIGITS.fullmatch(declared.strip()) and int(declared) > limit:
            return 413
        if self._pushes >= MAX_PENDING_PUSHES:
            return 503
        # counted from the first byte read: bodies being read are held in memory too
        self._pushes += 1
        handed_over = False
        try:
            body = bytearray()
            try:
                async for chunk in request.stream():
                    body += chunk
                    if len(body) > limit:
                        return 413
            except ClientDisconnect:  # gone (or timed out) before the whole body came
                return 400
            data = bytes(body)
            if not signature_ok(subscription.secret, data, request.headers.get("x-hub-signature")):
                name = self._name(subscription)
                log.warning("%s: WebSub content without a valid signature ignored", name)
                return 202
            source = next((f for f in self.config.feeds if f.url == subscription.feed_url), None)
            if source is None or not source.enabled:
                return 202
            self._spawn(self._ingest(source, data, request.headers.get("content-type")))
            handed_over = True  # _ingest counts it down when stored
            return 202
        finally:
            if not handed_over:
                self._pushes -= 1

    async def _ingest(self, source: FeedSource, body: bytes, content_type: str | None) -> None:
        try:
            result = await self.poller.ingest_pushed(source, body, content_type)
        finally:
            self._pushes -= 1
        name = source.shown_name
        if result.error is not None:
            log.warning("%s: WebSub content ignored: %s", name, result.error.message)
            return
        log.info(
            "%s: WebSub content: %d new, %d updated; next poll at %s",
            name,
            result.new,
            result.updated,
            to_iso(result.state.next_due) if result.state and result.state.next_due else "-",
        )
        self.on_pushed(source, result)
