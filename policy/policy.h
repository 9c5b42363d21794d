/*
 * Policy files (docs/POLICY.md): how the placement engine weighs money
 * against time, which sites it prefers or fills first, where tagged data may
 * go, tenants' quotas and budgets, preemption and the broker's timeouts.
 * Loaded strictly (unknown keys are errors) with file:line:column messages;
 * a bad file never half-loads. Evaluation lives in policy/place.c.
 */
#ifndef MERIDIAN_POLICY_POLICY_H
#define MERIDIAN_POLICY_POLICY_H

#include <stddef.h>
#include <jansson.h>

#include "common/json.h"
#include "policy/arena.h"
#include "policy/fed.h"
#include "policy/job.h"

/* Which sites a rule covers: every list given must match (a site matches a
 * list when it names the site / the site's region / one of its labels). */
struct mer_selector {
	char **sites;
	size_t nsites;
	char **regions;
	size_t nregions;
	struct mer_kv *labels; /* all must match */
	size_t nlabels;
};

struct mer_tier {
	const char *name;
	struct mer_selector match;
};

/* A bonus (negative usd) or penalty added to each stage placed there. */
struct mer_pref {
	struct mer_selector match;
	double usd;
};

/* Data tagged `tag` may be read or written only in these regions. */
struct mer_residency {
	const char *tag;
	char **regions;
	size_t nregions;
};

struct mer_gpu_quota {
	const char *model;
	double gpus;
};

struct mer_tenant_policy {
	const char *tenant; /* "*" is the default for unlisted tenants */
	struct mer_gpu_quota *gpus;
	size_t ngpus;
	long long concurrent_stages; /* -1: no limit */
	double budget_usd;	     /* -1: no budget */
};

struct mer_weights {
	double compute, egress, transfer_time, wait, runtime, preference;
};

struct mer_policy {
	struct mer_arena arena;
	const char *version;
	double vot_usd_hour[MER_PRIO_COUNT];
	struct mer_weights w;
	double default_duration_s[MER_KIND_COUNT];
	struct mer_pref *prefs;
	size_t nprefs;
	struct mer_tier *tiers;
	size_t ntiers;
	double overflow_factor;
	struct mer_residency *residency;
	size_t nresidency;
	struct mer_tenant_policy *tenants;
	size_t ntenants;
	/* preempt[a][b]: stages of class a may displace preemptible stages of
	 * class b */
	unsigned char preempt[MER_PRIO_COUNT][MER_PRIO_COUNT];
	double preemption_penalty_usd;
	double near_miss_usd_per_replica_hour;
	double pending_timeout_s;  /* enforced by the broker; 0 = never */
	long long retry_limit;	   /* enforced by the broker */
	double site_stale_after_s; /* 0: heartbeat age not checked */
	double history_prior_samples;
};

/* Validates root (doc optional, for file:line:column) into a policy. */
int mer_policy_from_json(const json_t *root, const struct mer_json_doc *doc,
			 struct mer_policy **out, char *err, size_t errlen);
int mer_policy_parse(const char *name, const char *text, size_t len,
		     struct mer_policy **out, char *err, size_t errlen);
int mer_policy_load(const char *path, struct mer_policy **out, char *err,
		    size_t errlen);
/* The built-in policy (version "builtin-default") used when none is set. */
int mer_policy_default(struct mer_policy **out);
void mer_policy_free(struct mer_policy *pol);

/* The rules for a tenant: its own entry, else "*", else NULL. */
const struct mer_tenant_policy *mer_policy_tenant(const struct mer_policy *pol,
						  const char *tenant);
/* 1 when the site matches the selector. */
int mer_selector_match(const struct mer_selector *sel,
		       const struct mer_site *site);

#endif
