/*
 * bin/meridian-agent as a site admin uses it: --help, --print-summary on a
 * sim site, config errors as file:line:column, an unreachable scheduler
 * (exit 1, summary marked down), and join + run against a broker-side link
 * (the site's summary arrives; SIGTERM stops it cleanly). The program is
 * found through MERIDIAN_BIN; without it the cases are skipped, saying so.
 */
#include "common/err.h"
#include "common/keys.h"
#include "common/link.h"
#include "common/token.h"
#include "policy/fed.h"
#include "tests/harness.h"
#include "tests/lib/proc.h"

#include <pthread.h>
#include <sodium.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

static char bin[1024];

static int need_bin(void)
{
	const char *d = getenv("MERIDIAN_BIN");

	if (!d || !*d) {
		t_skip("MERIDIAN_BIN is not set (run through make test)");
		return 0;
	}
	snprintf(bin, sizeof(bin), "%s/meridian-agent", d);
	if (access(bin, X_OK) != 0) {
		t_fail(__FILE__, __LINE__, "%s is not executable", bin);
		return 0;
	}
	return 1;
}

/* Runs a command line; stdout+stderr into *out. */
static int run(const char *cmd, char **out, int *status)
{
	char full[4096];
	FILE *p;
	size_t n = 0, cap = 65536;
	char *buf = malloc(cap);

	snprintf(full, sizeof(full), "%s 2>&1", cmd);
	if (!buf || !(p = popen(full, "r"))) {
		free(buf);
		return MER_EIO;
	}
	n = fread(buf, 1, cap - 1, p);
	buf[n] = '\0';
	int st = pclose(p);
	*status = WIFEXITED(st) ? WEXITSTATUS(st) : 128;
	*out = buf;
	return 0;
}

static int write_file(const char *path, const char *text)
{
	FILE *f = fopen(path, "w");
	if (!f)
		return MER_EIO;
	fputs(text, f);
	return fclose(f) ? MER_EIO : 0;
}

static void sim_config(const char *dir, const char *extra, char *path, size_t n)
{
	char sim[600], text[2048];

	snprintf(sim, sizeof(sim), "%s/site.sim.json", dir);
	write_file(sim, "{\"pools\": [{\"name\": \"gpu\", \"nodes\": "
			"[{\"count\": 2, \"cpus\": 32, \"memory_mb\": 1000, "
			"\"gpus\": {\"h100\": 4}}]}]}");
	snprintf(text, sizeof(text),
		 "{\"site\": {\"name\": \"cli-site\", \"region\": \"r1\"},\n"
		 " \"scheduler\": {\"kind\": \"sim\", \"sim_file\": \"%s\"},\n"
		 " \"prices\": {\"gpu_hour\": {\"h100\": 4}},\n"
		 " \"datasets\": [{\"name\": \"gone\", \"path\": "
		 "\"%s/missing\"}],\n"
		 " \"agent\": {\"state_file\": \"%s/state\", \"key_file\": "
		 "\"%s/site.key\", \"report_interval\": \"500ms\"%s}}\n",
		 sim, dir, dir, dir, extra ? extra : "");
	snprintf(path, n, "%s/site.json", dir);
	write_file(path, text);
}

static void test_help(void)
{
	char cmd[1200], *out = NULL;
	int st;

	if (!need_bin())
		return;
	snprintf(cmd, sizeof(cmd), "'%s' --help", bin);
	T_OK(run(cmd, &out, &st));
	T_EQ_INT(st, 0);
	T_CONTAINS(out, "--print-summary");
	T_CONTAINS(out, "join --broker URL --token T --broker-key");
	T_CONTAINS(out, "slurm kubernetes yarn sim");
	free(out);
	snprintf(cmd, sizeof(cmd), "'%s' --bogus", bin);
	T_OK(run(cmd, &out, &st));
	T_EQ_INT(st, 2);
	free(out);
}

static void test_print_summary(void)
{
	char *dir = NULL, cfg[700], cmd[2048], *out = NULL;
	int st;

	if (!need_bin())
		return;
	T_OK(t_tmpdir("agent-cli", &dir));
	sim_config(dir, NULL, cfg, sizeof(cfg));
	snprintf(cmd, sizeof(cmd),
		 "'%s' --config '%s' --print-summary "
		 "--log-level error",
		 bin, cfg);
	T_OK(run(cmd, &out, &st));
	T_EQ_INT(st, 0);
	json_t *j = json_loads(out, 0, NULL);
	T_ASSERT(j != NULL);
	json_t *site = json_object_get(j, "site");
	char err[512];
	if (mer_site_validate(site, NULL, err, sizeof(err)))
		t_fail(__FILE__, __LINE__, "fed.c refused: %s", err);
	T_EQ_STR(json_string_value(json_object_get(site, "name")), "cli-site");
	T_EXPECT(json_number_value(json_object_get(
		     json_object_get(
			 json_object_get(
			     json_array_get(json_object_get(site, "pools"), 0),
			     "resources"),
			 "gpu:h100"),
		     "total")) == 8);
	T_EQ_INT(json_array_size(json_object_get(site, "datasets")), 0);
	T_EQ_INT(json_array_size(json_object_get(json_object_get(j, "status"),
						 "datasets_missing")),
		 1);
	json_decref(j);
	free(out);

	/* The scheduler unreachable: exit 1, the summary says why. */
	char sim[700];
	snprintf(sim, sizeof(sim), "%s/site.sim.json", dir);
	write_file(sim, "{\"unreachable\": true}");
	T_OK(run(cmd, &out, &st));
	T_EQ_INT(st, 1);
	T_CONTAINS(out, "\"health\": \"down\"");
	T_CONTAINS(out, "unreachable");
	free(out);
	t_rmtree(dir);
	free(dir);
}

static void test_config_error(void)
{
	char *dir = NULL, cfg[700], cmd[2048], *out = NULL;
	int st;

	if (!need_bin())
		return;
	T_OK(t_tmpdir("agent-cli", &dir));
	snprintf(cfg, sizeof(cfg), "%s/bad.json", dir);
	write_file(cfg, "{\"site\": {\"name\": \"a\", \"region\": \"r\"},\n"
			" \"scheduler\": {\"kind\": \"slurm\",\n"
			"   \"url\": \"unix:///x\", \"timout\": \"5s\"}}\n");
	snprintf(cmd, sizeof(cmd), "'%s' --config '%s' --print-summary", bin,
		 cfg);
	T_OK(run(cmd, &out, &st));
	T_EQ_INT(st, 2);
	char want[800];
	snprintf(want, sizeof(want),
		 "%s:3:24: scheduler.timout: unknown key 'timout'", cfg);
	T_CONTAINS(out, want);
	free(out);
	t_rmtree(dir);
	free(dir);
}

/* Broker side for join + run. */
static struct {
	pthread_mutex_t lock;
	uint8_t pk[MER_KEY_BYTES];
	char token[MER_TOKEN_SIZE];
	int joined, summaries, valid;
} b = {.lock = PTHREAD_MUTEX_INITIALIZER};

static int b_check_key(void *arg, const uint8_t pk[MER_KEY_BYTES],
		       char site[MER_LINK_NAME_MAX])
{
	int ok;

	(void)arg;
	pthread_mutex_lock(&b.lock);
	ok = b.joined && memcmp(pk, b.pk, MER_KEY_BYTES) == 0;
	pthread_mutex_unlock(&b.lock);
	if (!ok)
		return MER_ENOTFOUND;
	snprintf(site, MER_LINK_NAME_MAX, "cli-site");
	return 0;
}

static int b_join(void *arg, const char *token, const uint8_t pk[MER_KEY_BYTES],
		  char site[MER_LINK_NAME_MAX], char region[MER_LINK_NAME_MAX])
{
	(void)arg;
	if (strcmp(token, b.token) != 0)
		return MER_ENOTFOUND;
	pthread_mutex_lock(&b.lock);
	memcpy(b.pk, pk, MER_KEY_BYTES);
	b.joined = 1;
	pthread_mutex_unlock(&b.lock);
	snprintf(site, MER_LINK_NAME_MAX, "cli-site");
	snprintf(region, MER_LINK_NAME_MAX, "r1");
	return 0;
}

static int b_report(void *arg, const char *site, json_t *r)
{
	char err[512];
	int ok;

	(void)arg;
	(void)site;
	const char *type = json_string_value(json_object_get(r, "type"));
	if (!type || strcmp(type, "summary") != 0)
		return 0;
	ok = mer_site_validate(json_object_get(r, "site"), NULL, err,
			       sizeof(err)) == 0;
	pthread_mutex_lock(&b.lock);
	b.summaries++;
	b.valid += ok;
	pthread_mutex_unlock(&b.lock);
	return 0;
}

static void test_join_and_run(void)
{
	struct mer_keypair bk;
	struct mer_link_server *srv = NULL;
	struct mer_link_server_opts so = {0};
	struct mer_link_server_ops ops = {0};
	char fp[MER_KEY_FP_SIZE], *dir = NULL, cfg[700], cmd[3000], extra[600];
	char *out = NULL, log[700];
	struct t_proc *p = NULL;
	struct stat sb;
	int st;

	if (!need_bin())
		return;
	T_OK(t_tmpdir("agent-cli", &dir));
	char wrong[MER_TOKEN_SIZE];
	T_OK(mer_keypair_generate(&bk));
	mer_key_fingerprint(bk.pk, fp);
	T_OK(mer_token_generate(b.token));
	T_OK(mer_token_generate(wrong));
	so.url = "tcp://127.0.0.1:0";
	so.key = &bk;
	ops.check_key = b_check_key;
	ops.join = b_join;
	ops.report = b_report;
	T_OK(mer_link_server_start(&so, &ops, &srv));
	/* no agent.broker / broker_key: run takes them from what join
	 * saved */
	(void)extra;
	sim_config(dir, NULL, cfg, sizeof(cfg));

	/* a wrong token is refused with a reason */
	snprintf(cmd, sizeof(cmd),
		 "'%s' join --broker '%s' --token '%s' --broker-key "
		 "'%s' --config '%s' --log-level error",
		 bin, mer_link_server_url(srv), wrong, fp, cfg);
	T_OK(run(cmd, &out, &st));
	T_EQ_INT(st, 1);
	T_CONTAINS(out, "unknown");
	/* the secret is not shown */
	T_EXPECT(strstr(out, wrong + MER_TOKEN_ID_LEN + 1) == NULL);
	free(out);
	snprintf(cmd, sizeof(cmd),
		 "'%s' join --broker '%s' --token '%s' --broker-key "
		 "'%s' --config '%s' --log-level error",
		 bin, mer_link_server_url(srv), b.token, fp, cfg);
	T_OK(run(cmd, &out, &st));
	T_EQ_INT(st, 0);
	T_CONTAINS(out, "joined as site cli-site (region r1)");
	free(out);
	snprintf(log, sizeof(log), "%s/site.key", dir);
	T_ASSERT(stat(log, &sb) == 0);
	T_EQ_INT(sb.st_mode & 0777, 0600);
	snprintf(log, sizeof(log), "%s/site.key.joined", dir);
	T_ASSERT(stat(log, &sb) == 0);
	T_EQ_INT(sb.st_mode & 0777, 0600);
	json_t *jd = json_load_file(log, 0, NULL);
	T_EQ_STR(json_string_value(json_object_get(jd, "broker")),
		 mer_link_server_url(srv));
	T_EQ_STR(json_string_value(json_object_get(jd, "broker_key")), fp);
	T_EQ_STR(json_string_value(json_object_get(jd, "site")), "cli-site");
	json_decref(jd);
	/* joining again with the key in place: refused, saying how to
	 * rotate */
	T_OK(run(cmd, &out, &st));
	T_EQ_INT(st, 1);
	T_CONTAINS(out, "--rotate-key");
	free(out);

	/* run: the summary arrives; SIGTERM stops it with exit 0 */
	snprintf(log, sizeof(log), "%s/agent.log", dir);
	char *argv[] = {bin, "--config", cfg, NULL};
	T_OK(t_proc_spawn(bin, argv, NULL, log, &p));
	long long end = t_now_ms() + 20000;
	int n = 0;
	while (t_now_ms() < end && n < 2) {
		pthread_mutex_lock(&b.lock);
		n = b.valid;
		pthread_mutex_unlock(&b.lock);
		t_sleep_ms(100);
	}
	T_EXPECT(n >= 2); /* the first and at least one periodic one */
	T_OK(t_proc_stop(p, 5000, &st));
	T_EXPECT(WIFEXITED(st) && WEXITSTATUS(st) == 0);
	mer_link_server_stop(srv);
	mer_keypair_wipe(&bk);
	sodium_memzero(b.token, sizeof(b.token));
	t_rmtree(dir);
	free(dir);
}

static const struct t_case cases[] = {
    {"help", test_help},
    {"print_summary", test_print_summary},
    {"config_error", test_config_error},
    {"join_and_run", test_join_and_run},
};

T_MAIN("agent_cli", cases)
