/* Tests for the site agent's config (site-agent/config.c): the table, a
 * full file, defaults, and errors as file:line:column. */
#include "common/err.h"
#include "site-agent/config.h"
#include "tests/harness.h"
#include "tests/lib/proc.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static const char *good =
    "{\n"
    "  \"site\": {\"name\": \"east-1\", \"region\": \"cn-east-1\",\n"
    "           \"labels\": {\"country\": \"cn\"}},\n"
    "  \"scheduler\": {\"kind\": \"slurm\", \"url\": \"unix:///run/s.sock\","
    "\n                \"timeout\": \"3s\"},\n"
    "  \"share\": {\"fraction\": 0.5, \"pools\": [\"gpu\", {\"name\": "
    "\"cpu\", \"fraction\": 0.2, \"fabric\": [\"eth\"]}]},\n"
    "  \"fabric\": [\"ib\"], \"storage\": [\"lustre\"],\n"
    "  \"prices\": {\"gpu_hour\": {\"a100\": 2.5}, \"core_hour\": 0.03},\n"
    "  \"datasets\": [{\"name\": \"d1\", \"bytes\": 10, \"path\": "
    "\"s3://b/d1\", \"tags\": [\"residency:cn\"]}]\n"
    "}\n";

static void test_table_is_valid(void)
{
	char err[512];
	T_OK(mer_cfg_table_check(&mer_agent_cfg_table, err, sizeof(err)));
}

static void test_good_file(void)
{
	struct mer_agent_cfg c = {0};
	char err[512] = "";
	int shared;
	double f;
	const json_t *fab;

	T_OK(
	    mer_agent_cfg_load_string("site.json", good, &c, err, sizeof(err)));
	T_EQ_STR(c.name, "east-1");
	T_EQ_STR(c.region, "cn-east-1");
	T_EQ_INT(c.kind, MER_AGENT_SLURM);
	T_EQ_INT(c.timeout_ms, 3000);
	T_EQ_STR(c.namespace_, "default");
	T_EQ_INT(c.report_interval_ms, 30000);
	T_EXPECT(c.share_fraction == 0.5);
	mer_agent_cfg_pool_share(&c, "gpu", &shared, &f, &fab);
	T_EQ_INT(shared, 1);
	T_EXPECT(f == 0.5);
	T_EXPECT(fab == NULL);
	mer_agent_cfg_pool_share(&c, "cpu", &shared, &f, &fab);
	T_EQ_INT(shared, 1);
	T_EXPECT(f == 0.2);
	T_EXPECT(json_array_size(fab) == 1);
	mer_agent_cfg_pool_share(&c, "other", &shared, &f, &fab);
	T_EQ_INT(shared, 0);
	mer_agent_cfg_free(&c);
}

struct bad_case {
	const char *text;
	const char *want; /* substring of the error */
};

static const struct bad_case bad[] = {
    {"{\"site\": {\"name\": \"a\", \"region\": \"r\"},\n"
     " \"scheduler\": {\"kind\": \"kubernetes\", \"url\": \"https://k\","
     " \"namespace\": \"ml/../x\"}}",
     "scheduler.namespace: must be a DNS-1123 label"},
    {"{\"site\": {\"name\": \"a\", \"region\": \"r\"},\n"
     " \"scheduler\": {\"kind\": \"kubernetes\", \"url\": \"https://k\","
     " \"namespace\": \"Team-A\"}}",
     "scheduler.namespace: must be a DNS-1123 label"},
    {"{\"site\": {\"name\": \"a\", \"region\": \"r\"},\n"
     " \"scheduler\": {\"kind\": \"pbs\"}}",
     "bad.json:2:24: scheduler.kind: 'pbs' is not one of"},
    {"{\"site\": {\"name\": \"a\", \"region\": \"r\"},\n"
     " \"scheduler\": {\"kind\": \"slurm\", \"urll\": \"x\"}}",
     "bad.json:2:33: scheduler.urll: unknown key"},
    {"{\"site\": {\"region\": \"r\"},\n"
     " \"scheduler\": {\"kind\": \"sim\"}}",
     "site.name: required setting is missing"},
    {"{\"site\": {\"name\": \"a b\", \"region\": \"r\"},\n"
     " \"scheduler\": {\"kind\": \"yarn\", \"url\": \"http://x\"}}",
     "bad.json:1:19: site.name: must be 1-63 characters"},
    {"{\"site\": {\"name\": \"a\", \"region\": \"r\"},\n"
     " \"scheduler\": {\"kind\": \"kubernetes\"}}",
     "scheduler.url: required for this scheduler kind"},
    {"{\"site\": {\"name\": \"a\", \"region\": \"r\"},\n"
     " \"scheduler\": {\"kind\": \"sim\"}}",
     "scheduler.sim_file: required when scheduler.kind is sim"},
    {"{\"site\": {\"name\": \"a\", \"region\": \"r\"},\n"
     " \"scheduler\": {\"kind\": \"slurm\", \"url\": \"ftp://x\"}}",
     "scheduler.url: must start with unix:///, http:// or https://"},
    {"{\"site\": {\"name\": \"a\", \"region\": \"r\"},\n"
     " \"scheduler\": {\"kind\": \"slurm\", \"url\": \"unix:///s\"},\n"
     " \"fabric\": [\"ib\", \"myrinet\"]}",
     "bad.json:3:12: fabric: 'myrinet' is not one of ib, roce, eth"},
    {"{\"site\": {\"name\": \"a\", \"region\": \"r\"},\n"
     " \"scheduler\": {\"kind\": \"slurm\", \"url\": \"unix:///s\"},\n"
     " \"datasets\": [{\"name\": \"d\", \"path\": \"rel/path\"}]}",
     "bad.json:3:37: datasets[0].path: must be an absolute posix path"},
    {"{\"site\": {\"name\": \"a\", \"region\": \"r\"},\n"
     " \"scheduler\": {\"kind\": \"slurm\", \"url\": \"unix:///s\"},\n"
     " \"datasets\": [{\"name\": \"d\", \"path\": \"/x\"},\n"
     "              {\"name\": \"d\", \"path\": \"/y\"}]}",
     "bad.json:4:24: datasets[1].name: duplicate dataset 'd'"},
    {"{\"site\": {\"name\": \"a\", \"region\": \"r\"},\n"
     " \"scheduler\": {\"kind\": \"slurm\", \"url\": \"unix:///s\"},\n"
     " \"share\": {\"pools\": [{\"name\": \"p\", \"fraction\": 1.5}]}}",
     "bad.json:3:48: share.pools[0].fraction: must be a number from 0 "
     "to 1"},
    {"{\"site\": {\"name\": \"a\", \"region\": \"r\"},\n"
     " \"scheduler\": {\"kind\": \"slurm\", \"url\": \"unix:///s\"},\n"
     " \"prices\": {\"gpu_hour\": {\"a100\": \"cheap\"}}}",
     "bad.json:3:34: prices.gpu_hour.a100: must be a number"},
    {"{\"site\": {\"name\": \"a\", \"region\": \"r\"},\n"
     " \"scheduler\": {\"kind\": \"slurm\", \"url\": \"unix:///s\",\n"
     "   \"token\": \"SECRETTOKEN\", \"timeout\": true}}",
     "bad.json:3:39: scheduler.timeout: expected a duration"},
    {"{\"site\": {\"name\": \"a\", \"region\": \"r\"},\n"
     " \"scheduler\": {\"kind\": \"slurm\", \"url\": \"unix:///s\"}",
     "bad.json:2:"},
};

static void test_errors_have_positions(void)
{
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		struct mer_agent_cfg c = {0};
		char err[512] = "";
		int rv = mer_agent_cfg_load_string("bad.json", bad[i].text, &c,
						   err, sizeof(err));
		T_EXPECT(rv != 0);
		T_CONTAINS(err, bad[i].want);
		T_EXPECT(strstr(err, "SECRETTOKEN") == NULL);
		mer_agent_cfg_free(&c);
	}
}

static void test_file_errors(void)
{
	struct mer_agent_cfg c = {0};
	char err[512] = "";

	T_EQ_INT(
	    mer_agent_cfg_load("/nonexistent/site.json", &c, err, sizeof(err)),
	    MER_EIO);
	T_CONTAINS(err, "/nonexistent/site.json");
}

static void test_secret_not_printed(void)
{
	struct mer_agent_cfg c = {0};
	char err[512] = "";
	const char *t = "{\"site\": {\"name\": \"a\", \"region\": \"r\"},\n"
			" \"scheduler\": {\"kind\": \"kubernetes\", \"url\": "
			"\"https://k:6443\", \"token\": \"SECRETTOKEN\"}}";

	T_OK(mer_agent_cfg_load_string("k.json", t, &c, err, sizeof(err)));
	json_t *j = mer_cfg_to_json(&mer_agent_cfg_table, &c);
	char *s = json_dumps(j, 0);
	T_EXPECT(s && strstr(s, "SECRETTOKEN") == NULL);
	T_CONTAINS(s, "[redacted]");
	free(s);
	json_decref(j);
	mer_agent_cfg_free(&c);
}

/* The shipped examples load (those whose files need not exist here). */
static void test_examples_load(void)
{
	static const char *const names[] = {"sim-east", "slurm-north",
					    "yarn-eu"};
	const char *top = getenv("MERIDIAN_TOP");
	char path[1024], err[512];

	if (!top || !*top)
		top = ".";
	if (chdir(top) != 0) {
		t_fail(__FILE__, __LINE__, "cannot chdir to %s", top);
		return;
	}
	for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++) {
		struct mer_agent_cfg c = {0};
		snprintf(path, sizeof(path), "deploy/examples/sites/%s.json",
			 names[i]);
		if (mer_agent_cfg_load(path, &c, err, sizeof(err)) != 0)
			t_fail(__FILE__, __LINE__, "%s", err);
		else
			T_EQ_STR(c.name, names[i]);
		mer_agent_cfg_free(&c);
	}
}

/* Review 22: a relative sim_file is relative to the config file. */
static void test_sim_file_relative_to_config(void)
{
	struct mer_agent_cfg c = {0};
	char *dir = NULL, path[700], sim[700], want[700], err[512] = "";
	FILE *f;

	T_OK(t_tmpdir("agent-cfg", &dir));
	snprintf(sim, sizeof(sim), "%s/site.sim.json", dir);
	snprintf(path, sizeof(path), "%s/site.json", dir);
	T_ASSERT((f = fopen(sim, "w")) != NULL);
	fputs("{\"pools\": []}", f);
	fclose(f);
	T_ASSERT((f = fopen(path, "w")) != NULL);
	fputs("{\"site\": {\"name\": \"a\", \"region\": \"r\"},\n"
	      " \"scheduler\": {\"kind\": \"sim\", \"sim_file\": "
	      "\"site.sim.json\"}}\n",
	      f);
	fclose(f);
	/* the test's cwd is not dir */
	T_OK(mer_agent_cfg_load(path, &c, err, sizeof(err)));
	snprintf(want, sizeof(want), "%s/site.sim.json", dir);
	T_EQ_STR(c.sim_file, want);
	mer_agent_cfg_free(&c);
	/* and a missing one says which file, with its position */
	unlink(sim);
	memset(&c, 0, sizeof(c));
	T_EXPECT(mer_agent_cfg_load(path, &c, err, sizeof(err)) != 0);
	T_CONTAINS(err, "site.json:2:");
	T_CONTAINS(err, "cannot read");
	mer_agent_cfg_free(&c);
	t_rmtree(dir);
	free(dir);
}

static const struct t_case cases[] = {
    {"examples_load", test_examples_load},
    {"table_is_valid", test_table_is_valid},
    {"good_file", test_good_file},
    {"errors_have_positions", test_errors_have_positions},
    {"file_errors", test_file_errors},
    {"secret_not_printed", test_secret_not_printed},
    {"sim_file_relative_to_config", test_sim_file_relative_to_config},
};

T_MAIN("agent_config", cases)
