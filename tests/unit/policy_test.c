/*
 * Policy files: the shipped examples load; bad files fail whole, with
 * file:line:column and the setting at fault; unknown keys are rejected.
 */
#include "common/err.h"
#include "policy/policy.h"
#include "tests/harness.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void test_examples_load(void)
{
	static const char *const files[] = {"cost-first", "locality-first",
					    "data-sovereignty",
					    "inference-first"};
	const char *top = getenv("MERIDIAN_TOP");
	char path[1024], err[512];

	for (size_t i = 0; i < 4; i++) {
		struct mer_policy *pol = NULL;
		snprintf(path, sizeof(path), "%s/policy/examples/%s.json",
			 top ? top : ".", files[i]);
		int rv = mer_policy_load(path, &pol, err, sizeof(err));
		if (rv) {
			t_fail(__FILE__, __LINE__, "%s: %s", files[i], err);
			continue;
		}
		T_CONTAINS(pol->version, files[i]);
		mer_policy_free(pol);
	}
}

static void test_values(void)
{
	const char *text =
	    "{\"version\":\"v7\",\"value_of_time_usd_per_hour\":"
	    "{\"online\":300},\"weights\":{\"egress\":2.5},"
	    "\"tiers\":[{\"name\":\"a\",\"match\":{\"labels\":"
	    "{\"provider\":\"onprem\"}}},{\"name\":\"b\",\"match\":"
	    "{\"regions\":[\"x\"]}}],\"overflow_factor\":3,"
	    "\"residency\":[{\"tag\":\"pii\",\"regions\":[\"x\",\"y\"]}],"
	    "\"tenants\":{\"acme\":{\"gpus\":{\"a100\":8},"
	    "\"concurrent_stages\":4,\"budget_usd\":100},\"*\":{}},"
	    "\"preemption\":{\"online\":[\"batch\",\"best-effort\"]},"
	    "\"retry_limit\":7,\"pending_timeout_s\":60}";
	struct mer_policy *pol = NULL;
	char err[256] = "";

	T_OK(mer_policy_parse("p.json", text, strlen(text), &pol, err,
			      sizeof(err)));
	T_EQ_STR(pol->version, "v7");
	T_EXPECT(pol->vot_usd_hour[MER_PRIO_ONLINE] == 300);
	T_EXPECT(pol->vot_usd_hour[MER_PRIO_BATCH] == 10); /* default */
	T_EXPECT(pol->w.egress == 2.5 && pol->w.compute == 1);
	T_EQ_INT(pol->ntiers, 2);
	T_EXPECT(pol->overflow_factor == 3);
	T_EQ_INT(pol->nresidency, 1);
	T_EQ_INT(pol->residency[0].nregions, 2);
	T_EQ_INT(pol->preempt[MER_PRIO_ONLINE][MER_PRIO_BATCH], 1);
	T_EQ_INT(pol->preempt[MER_PRIO_BATCH][MER_PRIO_BEST_EFFORT], 0);
	T_EQ_INT(pol->retry_limit, 7);
	T_EXPECT(pol->pending_timeout_s == 60);
	const struct mer_tenant_policy *t = mer_policy_tenant(pol, "acme");
	T_ASSERT(t != NULL);
	T_EQ_INT(t->concurrent_stages, 4);
	T_EQ_INT(t->ngpus, 1);
	t = mer_policy_tenant(pol, "other");
	T_ASSERT(t != NULL);
	T_EQ_STR(t->tenant, "*");
	T_EQ_INT(t->concurrent_stages, -1);
	mer_policy_free(pol);

	T_OK(mer_policy_default(&pol));
	T_EQ_STR(pol->version, "builtin-default");
	mer_policy_free(pol);
}

struct bad {
	const char *name;
	const char *text;
	const char *want;
};

static const struct bad bad_policies[] = {
    {"unknown top key", "{\"version\":\"v\",\n  \"wieghts\":{}}",
     "p.json:2:13: wieghts: unknown key"},
    {"unknown weight", "{\"version\":\"v\",\"weights\":{\"speed\":1}}",
     "p.json:1:35: weights.speed: unknown key"},
    {"negative weight", "{\"version\":\"v\",\"weights\":{\"egress\":-1}}",
     "weights.egress: must be a number from 0 to"},
    {"missing version", "{\"weights\":{}}", "p.json:1:1: version: required"},
    {"empty version", "{\"version\":\"\"}", "version: must not be empty"},
    {"vot not object", "{\"version\":\"v\",\"value_of_time_usd_per_hour\":5}",
     "value_of_time_usd_per_hour: must be an object"},
    {"vot unknown class",
     "{\"version\":\"v\",\"value_of_time_usd_per_hour\":{\"urgent\":5}}",
     "value_of_time_usd_per_hour.urgent: unknown key"},
    {"tier without match", "{\"version\":\"v\",\"tiers\":[{\"name\":\"a\"}]}",
     "tiers[0].match: required"},
    {"tier empty match",
     "{\"version\":\"v\",\"tiers\":[{\"name\":\"a\",\"match\":{}}]}",
     "tiers[0].match: must name sites, regions or labels"},
    {"duplicate tier",
     "{\"version\":\"v\",\"tiers\":[{\"name\":\"a\",\"match\":{\"sites\":"
     "[\"x\"]}},{\"name\":\"a\",\"match\":{\"sites\":[\"y\"]}}]}",
     "tiers[1].name: duplicate tier \"a\""},
    {"overflow without tiers", "{\"version\":\"v\",\"overflow_factor\":2}",
     "overflow_factor: only means something with two or more tiers"},
    {"overflow below one",
     "{\"version\":\"v\",\"tiers\":[{\"name\":\"a\",\"match\":{\"sites\":"
     "[\"x\"]}},{\"name\":\"b\",\"match\":{\"sites\":[\"y\"]}}],"
     "\"overflow_factor\":0.5}",
     "overflow_factor: must be a number from 1 to"},
    {"residency no regions",
     "{\"version\":\"v\",\"residency\":[{\"tag\":\"pii\",\"regions\":[]}]}",
     "residency[0].regions: must list at least one region"},
    {"residency duplicate",
     "{\"version\":\"v\",\"residency\":[{\"tag\":\"pii\",\"regions\":"
     "[\"a\"]},{\"tag\":\"pii\",\"regions\":[\"b\"]}]}",
     "residency[1].tag: duplicate rule for tag \"pii\""},
    {"quota not integer",
     "{\"version\":\"v\",\"tenants\":{\"acme\":{\"gpus\":{\"a100\":1.5}}}}",
     "tenants.acme.gpus.a100: must be a non-negative integer"},
    {"tenant unknown key",
     "{\"version\":\"v\",\"tenants\":{\"acme\":{\"gpu\":{}}}}",
     "tenants.acme.gpu: unknown key"},
    {"preempt upward",
     "{\"version\":\"v\",\"preemption\":{\"batch\":[\"online\"]}}",
     "preemption.batch[0]: a class may only preempt less urgent classes"},
    {"preempt unknown class",
     "{\"version\":\"v\",\"preemption\":{\"online\":[\"low\"]}}",
     "preemption.online[0]: must be online, batch or best-effort"},
    {"retry limit negative", "{\"version\":\"v\",\"retry_limit\":-1}",
     "retry_limit: must be a non-negative integer"},
    {"retry limit huge", "{\"version\":\"v\",\"retry_limit\":5000}",
     "retry_limit: must be at most 1000"},
    {"timeout string", "{\"version\":\"v\",\"pending_timeout_s\":\"1h\"}",
     "pending_timeout_s: must be a number"},
    {"preference without usd",
     "{\"version\":\"v\",\"preferences\":[{\"match\":{\"sites\":[\"a\"]}}]}",
     "preferences[0].usd: required"},
    {"syntax", "{\"version\":\"v\",\n\n  \"weights\": {,}}", "p.json:3:"},
};

static void test_bad_policies(void)
{
	for (size_t i = 0; i < sizeof(bad_policies) / sizeof(bad_policies[0]);
	     i++) {
		const struct bad *b = &bad_policies[i];
		struct mer_policy *pol = NULL;
		char err[512] = "";
		int rv = mer_policy_parse("p.json", b->text, strlen(b->text),
					  &pol, err, sizeof(err));
		if (rv == 0 || pol || !strstr(err, b->want))
			t_fail(__FILE__, __LINE__,
			       "%s: rv=%d err=\"%s\", want \"%s\"", b->name, rv,
			       err, b->want);
		if (rv && strncmp(err, "p.json:", 7) != 0)
			t_fail(__FILE__, __LINE__, "%s: no position: %s",
			       b->name, err);
		mer_policy_free(pol);
	}
}

static void test_missing_file(void)
{
	struct mer_policy *pol = NULL;
	char err[256] = "";

	T_EQ_INT(
	    mer_policy_load("/nonexistent/policy.json", &pol, err, sizeof(err)),
	    MER_EIO);
	T_EXPECT(pol == NULL);
	T_CONTAINS(err, "/nonexistent/policy.json");
}

static const struct t_case cases[] = {
    {"examples_load", test_examples_load},
    {"values", test_values},
    {"bad_policies", test_bad_policies},
    {"missing_file", test_missing_file},
};

T_MAIN("policy", cases)
