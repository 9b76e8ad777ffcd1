"""The fields Bifrost's governance objects may have, from its schema (config.json) and its Helm
chart (`_helpers.tpl`): the governance section names in both spellings, and the allowed keys of
each budget, rate limit, customer, team, virtual key, provider config, model config and
provider. Any key outside these sets is a problem. Data only."""

from __future__ import annotations

# Fields of each Bifrost object, from its schema; anything else is an error.
_GOVERNANCE = {
    "budgets",
    "rate_limits",
    "customers",
    "teams",
    "business_units",
    "roles",
    "virtual_keys",
    "routing_rules",
    "pricing_overrides",
    "auth_config",
    "complexity_analyzer_config",
    "model_configs",
    "providers",
}
# Helm's spelling of each section (what _helpers.tpl reads) -> config.json's.
_HELM_SECTIONS = {
    "budgets": "budgets",
    "rateLimits": "rate_limits",
    "customers": "customers",
    "teams": "teams",
    "businessUnits": "business_units",
    "roles": "roles",
    "virtualKeys": "virtual_keys",
    "routingRules": "routing_rules",
    "pricingOverrides": "pricing_overrides",
    "authConfig": "auth_config",
    "complexityAnalyzerConfig": "complexity_analyzer_config",
    "modelConfigs": "model_configs",
    "providers": "providers",
}
_OWNERS = ("virtual_key_id", "team_id", "customer_id", "model_config_id", "provider_config_id")
_BUDGET = {"id", "max_limit", "reset_duration", "current_usage", "last_reset", "calendar_aligned", *_OWNERS}
_BUDGET_LINE = {"id", "max_limit", "reset_duration", "calendar_aligned"}
_LIMIT_PARTS = ("token_max_limit", "token_reset_duration", "request_max_limit", "request_reset_duration")
_RATE_LIMIT = {
    "id",
    *_LIMIT_PARTS,
    "token_current_usage",
    "token_last_reset",
    "request_current_usage",
    "request_last_reset",
    "calendar_aligned",
    "metric",
}
_HELM_RATE_LIMIT = {"id", *_LIMIT_PARTS}  # all the chart passes on
_CUSTOMER = {"id", "name", "budgets", "budget_id", "rate_limit_id", "calendar_aligned"}
_TEAM = {
    "id",
    "name",
    "customer_id",
    "budget_id",
    "rate_limit_id",
    "calendar_aligned",
    "business_unit_id",
    "source_id",
    "profile",
    "config",
    "claims",
    "virtual_key_count",
}
_VK = {
    "id",
    "name",
    "description",
    "value",
    "is_active",
    "expires_at",
    "calendar_aligned",
    "team_id",
    "customer_id",
    "access_profile_id",
    "budget_id",
    "rate_limit_id",
    "provider_configs",
    "mcp_configs",
}
_PROVIDER_CONFIG = {
    "id",
    "virtual_key_id",
    "provider",
    "weight",
    "allowed_models",
    "blacklisted_models",
    "key_ids",
    "keys",
    "budget_id",
    "rate_limit_id",
}
_MODEL_CONFIG = {
    "id",
    "model_name",
    "provider",
    "scope",
    "scope_id",
    "calendar_aligned",
    "budget_id",
    "budget_ids",
    "rate_limit_id",
    "rate_limit_ids",
}
_PROVIDER = {
    "id",
    "name",
    "description",
    "budget_id",
    "rate_limit_id",
    "send_back_raw_request",
    "send_back_raw_response",
    "store_raw_request_response",
    "network_config",
    "proxy_config",
    "custom_provider_config",
    "concurrency_and_buffer_size",
    "openai_config",
}
