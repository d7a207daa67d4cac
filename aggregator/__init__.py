"""aggregator: merges many feeds into clean, deduplicated topic feeds."""

__version__ = "0.1.0"
PROJECT_URL = "https://github.com/aggregator-dev/aggregator"
USER_AGENT = f"aggregator/{__version__} (+{PROJECT_URL})"
