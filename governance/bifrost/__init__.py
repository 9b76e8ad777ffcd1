"""Bifrost governance -> spendfuse rules (version 2). Pure: functions take already-parsed data.

`spendfuse import-bifrost FILE` reads a Bifrost `config.json` (parse it with
`json.loads(text, parse_float=Decimal)` so amounts stay exact) or a Helm values file for the
Bifrost chart (`bifrost.governance`), and prints equivalent rules. Clients keep sending their
virtual key in `x-bf-vk`; spendfuse reads that header too (`governance.identity`).

The translation is exact or it is refused: every field that has no exact spendfuse equivalent is
a problem naming its path (`governance.virtual_keys[2].provider_configs[0].rate_limit_id: ...`),
and all problems are raised together in one `BifrostImportError`. Nothing is widened and nothing
is dropped silently; the few settings that are left out because they mean nothing for spend
(dashboard credentials, load-balancing weights, descriptions) are listed below, and the notes
`convert_with_notes` returns go into the printed file's header.

Facts about Bifrost relied on, and where they come from (github.com/maximhq/bifrost unless a URL):

* Schema of `governance` (`transports/config.schema.json`): `budgets[]` {id, max_limit (USD),
  reset_duration, current_usage, last_reset, calendar_aligned (deprecated), and at most one owner:
  virtual_key_id | team_id | customer_id | model_config_id | provider_config_id};
  `rate_limits[]` {id, token_max_limit, token_reset_duration, request_max_limit,
  request_reset_duration, the *_current_usage / *_last_reset state, calendar_aligned
  (deprecated)}, plus `metric` (tokens|requests) for model-limit rows
  (`framework/configstore/tables/ratelimit.go`); `customers[]` {id, name, budgets (inline budget
  lines) | budget_id, rate_limit_id, calendar_aligned}; `teams[]` {id, name, customer_id,
  budget_id, rate_limit_id, calendar_aligned, business_unit_id, source_id, profile, config, claims};
  `virtual_keys[]` {id, name, description, value, is_active, expires_at, calendar_aligned, team_id
  | customer_id, access_profile_id, rate_limit_id, provider_configs[], mcp_configs[]};
  `provider_configs[]` {provider, allowed_models, blacklisted_models, key_ids, weight,
  rate_limit_id}; `model_configs[]` {id, model_name ("*" = all models), provider, scope
  (global | virtual_key | user), scope_id, calendar_aligned, budget_id, budget_ids, rate_limit_id,
  rate_limit_ids}; `providers[]` {name, budget_id, rate_limit_id, and transport settings}.
  Virtual keys of Bifrost <= 1.4 also carried `budget_id` (`tables/virtualkey.go` at 258b9a4), and
  Helm values still document it (`docs/deployment-guides/helm/governance.mdx`); it is read with
  that meaning, with a note, since current Bifrost attaches budgets by `budgets[].virtual_key_id`
  (likewise a team's `budget_id`: `tables/team.go` now has only budgets owned by `team_id`).
* Allow-lists (`transports/config.schema.json` `version`; https://docs.getbifrost.ai/migration-guides/v1.5.0):
  since v1.5.0 `[]` (or a missing list) allows nothing and `["*"]` everything, for
  `provider_configs`, `allowed_models` and `key_ids`; a config.json with `"version": 1` keeps the
  v1.4 meaning, `[]` = all. A file without `version` has the v1.5 meaning (the Helm chart renders
  none). Where the code reads a missing list as nothing, the seed's Helm governance docs say
  otherwise ("No provider_configs -> all providers allowed"; a provider config without
  `key_ids`/`keys` may use every key of its provider; their examples omit `allowed_models` for
  every model): the import follows the docs and prints a warning naming each such path.
* Provider keys (`providers.<name>.keys`, Helm `bifrost.providers`) become custody credentials
  reading the same `env.` variables (`provider_keys`); `key_ids` / `keys` name them
  (`Key.credentials`); self-hosted providers become operator hosts (`hosts`);
  `pricing_overrides` become prices (`pricing`, docs/providers/custom-pricing.mdx). Model names compare
  case-insensitively (`core/schemas` WhiteList.Contains uses strings.EqualFold); `*` only counts
  alone (WhiteList.Validate rejects it beside other names).
* Durations (`framework/configstore/tables/utils.go` ParseDuration): Go durations (`30s`, `5m`,
  `1h30m`) plus `Nd`, `Nw`, `NM` = N*30 days, `NY` = N*365 days, and daily/weekly/monthly/yearly.
  Rolling windows have exactly those lengths. Calendar alignment (`calendar_aligned` on the owning
  virtual key, team, customer or model config; `tables/budget.go` StampCalendarAlignment) snaps
  d/w/M/Y windows to UTC midnight, Monday, the 1st, January 1st whatever the count
  (GetCalendarPeriodStart); shorter units stay rolling. Virtual keys, teams and customers stamp
  their budgets and rate limit; model configs only their budgets.
* Rate limits: a max needs its reset duration, maxima are > 0 (`tables/ratelimit.go` BeforeSave);
  tokens are input + output (`docs/deployment-guides/config-json/governance.mdx`).
* Requiring a key: `plugins[name=governance].config.is_vk_mandatory`,
  `client.enforce_auth_on_inference` and its deprecated alias `client.enforce_governance_header`
  (schema), overridden by `governance.auth_config.disable_auth_on_inference: true`
  (docs/deployment-guides/config-json/governance.mdx). Any of them set true requires a key.
* Helm (`helm-charts/bifrost/templates/_helpers.tpl`): `bifrost.governance` keys are camelCase
  (`rateLimits`, `virtualKeys`, `modelConfigs`, `routingRules`, `pricingOverrides`,
  `businessUnits`, `authConfig`, `complexityAnalyzerConfig`), their entries snake_case; the chart
  copies only id/token_*/request_* of a rate limit and a fixed list of virtual key fields;
  `bifrost.plugins.governance.config.is_vk_mandatory` is rendered only when the plugin is enabled;
  `bifrost.client.enforceAuthOnInference` / `enforceGovernanceHeader` are the client flags. The
  chart's values.yaml defaults `enforceAuthOnInference: true`; a values file that does not set it
  says nothing here, so `find_governance` reports None for it.

Left out because they do not govern spend: virtual key `description`, provider config `weight`
(spendfuse does not route between providers; provider key weights become credential weights)
and ids, team `source_id`/`virtual_key_count`, the transport settings under `governance.providers[]`
(network, proxy, raw request flags, custom provider config), the dashboard credentials in
`auth_config`, and `complexity_analyzer_config` when there are no routing rules to use it.
"""

from __future__ import annotations

from governance.bifrost.convert import convert, convert_with_files, convert_with_notes
from governance.bifrost.dump import to_yaml
from governance.bifrost.errors import BifrostImportError
from governance.bifrost.locate import find_governance
from governance.bifrost.providers import PROVIDERS

__all__ = [
    "BifrostImportError",
    "PROVIDERS",
    "convert",
    "convert_with_files",
    "convert_with_notes",
    "find_governance",
    "to_yaml",
]
