"""The automation platform's own ``AP_*`` environment variables (those apstorage does not read).

apstorage shares the ``AP_`` prefix, and often the ``.env`` file, with the platform
(Activepieces), so a real deployment's environment holds dozens of the platform's variables:
flow timeouts, the queue, Redis, SMTP, webhooks, sandboxing, telemetry... None of them is a
typo of one of apstorage's, however close its name (``AP_FLOW_TIMEOUT_SECONDS`` is not
``AP_S3_TIMEOUT_SECONDS``): the configuration loader's "did you mean" warning
(``apstorage.config``) stays silent for every name ``is_platform_variable`` accepts, and warns
only for a name that is neither apstorage's nor the platform's and is closest to one of
apstorage's.

Where the names come from (this module is the one list; update it here):

- the platform's source: the ``AppSystemProp`` and ``WorkerSystemProp`` enums of
  ``packages/server/shared/src/lib/system-props.ts`` (each value is read as ``"AP_" + value``),
  and, for older releases still deployed, ``packages/server/api/src/app/helper/system/system-prop.ts``
  and ``packages/backend/src/app/helper/system/system-prop.ts``;
- its documentation: ``docs/install/reference/environment-variables.mdx`` ("every variable
  Activepieces reads") and the older ``docs/install/configuration/environment-variables.mdx``;
- its ``.env.example`` and docker-compose files.

Names from several releases are kept, since an operator's ``.env`` outlives a rename. Variables
both read (``AP_POSTGRES_*``, ``AP_S3_*``, ``AP_FILE_STORAGE_LOCATION``, ...) are apstorage's and are
not listed here; the platform's S3 variables are exactly the ``AP_S3_*`` ones apstorage reads,
so the loader treats ``AP_S3_`` as apstorage's own family (any other name in it is a typo).
``PLATFORM_FAMILIES`` are the prefixes of the platform's variable families:
any name under one (``AP_REDIS_SENTINEL_HOSTS``, a future ``AP_SMTP_...``) is the platform's. No
family begins any of apstorage's own names (a test checks).
"""

from __future__ import annotations

PLATFORM_VARIABLES: frozenset[str] = frozenset(
    "AP_" + name
    for name in """
    AGENT_TIMEOUT_SECONDS AGENTS_WORKER_CONCURRENCY AI_CREDIT_USD_VALUE API_KEY
    API_RATE_LIMIT_AUTHN_ENABLED API_RATE_LIMIT_AUTHN_MAX API_RATE_LIMIT_AUTHN_WINDOW APP_TITLE
    APP_WEBHOOK_SECRETS APPSUMO_TOKEN AXIOM_DATASET AXIOM_DOMAIN AXIOM_TOKEN BACKEND_URL CACHE_PATH
    CLIENT_REAL_IP_HEADER CLOUD_AUTH_ENABLED CLOUD_PLATFORM_ID CLOUDFLARE_API_BASE CLOUDFLARE_API_KEY
    CLOUDFLARE_API_TOKEN CLOUDFLARE_AUTH_EMAIL CLOUDFLARE_ZONE_ID CONTAINER_TYPE
    COPILOT_INSTANCE_TYPE DEFAULT_CONCURRENT_JOBS_LIMIT DEV_PIECES EDITION ENABLE_FLOW_ON_PUBLISH
    ENCRYPTION_KEY ENFORCE_CONNECTION_PIECE_BINDING ENGINE_EXECUTABLE_PATH ENVIRONMENT EXECUTION_MODE
    FAVICON_URL FEATUREBASE_API_KEY FIREBASE_ADMIN_CREDENTIALS FIREBASE_HASH_PARAMETERS
    FLOW_RUN_LOG_INPUT_TRUNCATE_THRESHOLD_KB FLOW_RUN_LOG_SLICE_THRESHOLD_KB FLOW_TIMEOUT_SECONDS
    FLOW_WORKER_CONCURRENCY FRONTEND_URL GOOGLE_CLIENT_ID GOOGLE_CLIENT_SECRET HYPERDX_TOKEN
    INTERNAL_URL ISSUE_ARCHIVE_DAYS JWT_SECRET LICENSE_KEY LOAD_TRANSLATIONS_FOR_DEV_PIECES LOG_LEVEL
    LOG_PRETTY LOKI_PASSWORD LOKI_URL LOKI_USERNAME MAX_BARRIER_SIGNALS
    MAX_CONCURRENT_JOBS_PER_PROJECT MAX_FIELDS_PER_TABLE MAX_FLOW_RUN_LOG_SIZE_MB
    MAX_MCPS_PER_PROJECT MAX_RECORDS_PER_TABLE MAX_STORE_ENTRY_VALUE_SIZE_KB MAX_TABLES_PER_PROJECT
    MAX_WEBHOOK_PAYLOAD_SIZE_MB MODEL_CATALOG_URL NETWORK_MODE NODE_EXECUTABLE_PATH
    OPENAI_API_BASE_URL OPENAI_API_KEY OPENROUTER_PROVISION_KEY OTEL_ENABLED
    OTEL_EXPORTER_OTLP_ENDPOINT OTEL_EXPORTER_OTLP_HEADERS PERPLEXITY_API_KEY PERPLEXITY_BASE_URL
    PIECES_SOURCE PIECES_SYNC_MODE PLATFORM_ID_FOR_DEDICATED_WORKER PM2_ENABLED
    POSTGRES_IDLE_TIMEOUT_MS POSTGRES_POOL_SIZE PRE_WARM_CACHE PREWARM_CACHE_ON_STARTUP
    PROJECT_RATE_LIMITER_ENABLED PUBLIC_URL QUEUE_MODE QUEUE_UI_ENABLED QUEUE_UI_PASSWORD
    QUEUE_UI_USERNAME REDIS_CONNECTION_MODE REDIS_DB REDIS_FAILED_JOB_RETENTION_DAYS
    REDIS_FAILED_JOB_RETENTION_MAX_COUNT REDIS_HOST REDIS_PASSWORD REDIS_PORT REDIS_SENTINEL_HOSTS
    REDIS_SENTINEL_NAME REDIS_SENTINEL_ROLE REDIS_SSL_CA_FILE REDIS_TYPE REDIS_URL REDIS_USE_SSL
    REDIS_USER RUNS_METADATA_UPDATE_CONCURRENCY SANDBOX_MEMORY_LIMIT SANDBOX_PROPAGATED_ENV_VARS
    SANDBOX_RUN_TIME_SECONDS SCHEDULED_WORKER_CONCURRENCY SCIM_DEFAULT_PROJECT_ROLE
    SECRET_MANAGER_API_KEY SENTRY_DSN SIGN_UP_ENABLED SKIP_PROJECT_LIMITS_CHECK SMTP_HOST
    SMTP_PASSWORD SMTP_PORT SMTP_SENDER_EMAIL SMTP_SENDER_NAME SMTP_USE_SSL SMTP_USERNAME
    SSRF_ALLOW_LIST STRIPE_SECRET_KEY STRIPE_WEBHOOK_SECRET TELEMETRY_ENABLED TEMPLATES_API_KEY
    TEMPLATES_SOURCE_URL TOOL_SEARCH_ENABLED TRIGGER_DEFAULT_POLL_INTERVAL TRIGGER_FAILURE_THRESHOLD
    TRIGGER_FAILURES_THRESHOLD TRIGGER_HOOKS_TIMEOUT_SECONDS TRIGGER_TIMEOUT_SECONDS
    TURNSTILE_SECRET_KEY TURNSTILE_SITE_KEY WARNING_TEXT_BODY WARNING_TEXT_HEADER
    WEBHOOK_PAYLOAD_INLINE_THRESHOLD_KB WEBHOOK_TIMEOUT_SECONDS WEBHOOK_URL WORKER_CONCURRENCY
    WORKER_TOKEN ZEROBOUNCE_API_KEY
    """.split()
)

# Prefixes of the platform's variable families (Redis, SMTP, the queue, the sandbox,
# OpenTelemetry, workers, log shippers, billing, sign-in, triggers, flows, pieces, ...).
PLATFORM_FAMILIES: tuple[str, ...] = (
    "AP_AI_", "AP_API_", "AP_APPSUMO_", "AP_AXIOM_", "AP_CLOUDFLARE_", "AP_COPILOT_",
    "AP_ENGINE_", "AP_FIREBASE_", "AP_FLOW_", "AP_GOOGLE_", "AP_HYPERDX_", "AP_LOG_", "AP_LOKI_",
    "AP_OPENAI_", "AP_OPENROUTER_", "AP_OTEL_", "AP_PERPLEXITY_", "AP_PIECES_", "AP_PROMETHEUS_",
    "AP_QUEUE_", "AP_REDIS_", "AP_SANDBOX_", "AP_SCIM_", "AP_SENTRY_", "AP_SMTP_", "AP_STRIPE_",
    "AP_TELEMETRY_", "AP_TEMPLATES_", "AP_TOOL_SEARCH_", "AP_TRIGGER_", "AP_TURNSTILE_",
    "AP_WEBHOOK_", "AP_WORKER_", "AP_ZEROBOUNCE_",
)


def is_platform_variable(name: str) -> bool:
    """True for a variable of the platform's (listed, or in one of its families)."""
    return name in PLATFORM_VARIABLES or name.startswith(PLATFORM_FAMILIES)


__all__ = ["PLATFORM_FAMILIES", "PLATFORM_VARIABLES", "is_platform_variable"]
