/*
 * Many sim agents against one broker-side link on this machine: 200 agent
 * loops (site-agent/loop.c), each with its own key, sim site and state
 * file, dial one mer_link_server. Every site's summary must arrive and pass
 * policy/fed.c; launch commands must come back as started/finished events;
 * a repeated launch must be acknowledged without a second run.
 */
#include "common/err.h"
#include "common/keys.h"
#include "common/link.h"
#include "common/log.h"
#include "policy/fed.h"
#include "site-agent/config.h"
#include "site-agent/loop.h"
#include "tests/harness.h"
#include "tests/lib/proc.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define NAGENTS 200
#define NLAUNCH 20

struct site {
	char name[32];
	struct mer_keypair kp;
	struct mer_agent_cfg cfg;
	pthread_t thr;
	int started;
	int rv;
	/* what the broker side saw (under g.lock) */
	int summaries;
	int valid;
	int started_ev, finished_ev, other_ev;
	int results_launched, results_already;
	char job_id[64]; /* of the finished event */
	char stage_id[64];
};

static struct {
	pthread_mutex_t lock;
	struct site *sites;
	atomic_int stop;
	char *dir;
	struct mer_keypair broker;
	char broker_fp[MER_KEY_FP_SIZE];
	int bad_reports;
} g = {.lock = PTHREAD_MUTEX_INITIALIZER};

static struct site *site_by_name(const char *name)
{
	int i;

	if (strncmp(name, "sim-", 4) != 0)
		return NULL;
	i = (int)strtol(name + 4, NULL, 10);
	return i >= 0 && i < NAGENTS ? &g.sites[i] : NULL;
}

static int check_key(void *arg, const uint8_t pk[MER_KEY_BYTES],
		     char site[MER_LINK_NAME_MAX])
{
	(void)arg;
	for (int i = 0; i < NAGENTS; i++) {
		if (memcmp(g.sites[i].kp.pk, pk, MER_KEY_BYTES) == 0) {
			snprintf(site, MER_LINK_NAME_MAX, "%s",
				 g.sites[i].name);
			return 0;
		}
	}
	return MER_ENOTFOUND;
}

static int on_report(void *arg, const char *name, json_t *r)
{
	struct site *s = site_by_name(name);
	const char *type = json_string_value(json_object_get(r, "type"));
	size_t i;
	json_t *e;
	char err[512];

	(void)arg;
	if (!s || !type) {
		pthread_mutex_lock(&g.lock);
		g.bad_reports++;
		pthread_mutex_unlock(&g.lock);
		return MER_EINVAL;
	}
	if (!strcmp(type, "summary")) {
		int first;
		pthread_mutex_lock(&g.lock);
		first = s->summaries++ == 0;
		pthread_mutex_unlock(&g.lock);
		if (first) {
			int ok = mer_site_validate(json_object_get(r, "site"),
						   NULL, err, sizeof(err)) == 0;
			if (!ok)
				fprintf(stderr, "%s: %s\n", name, err);
			pthread_mutex_lock(&g.lock);
			s->valid = ok;
			pthread_mutex_unlock(&g.lock);
		}
		return 0;
	}
	pthread_mutex_lock(&g.lock);
	json_array_foreach (json_object_get(r, "events"), i, e) {
		const char *ev = json_string_value(json_object_get(e, "event"));
		if (ev && !strcmp(ev, "started"))
			s->started_ev++;
		else if (ev && !strcmp(ev, "finished")) {
			const char *jid =
			    json_string_value(json_object_get(e, "job_id"));
			s->finished_ev++;
			snprintf(s->job_id, sizeof(s->job_id), "%s",
				 jid ? jid : "");
		} else
			s->other_ev++;
	}
	json_array_foreach (json_object_get(r, "results"), i, e) {
		const char *res =
		    json_string_value(json_object_get(e, "result"));
		if (res && !strcmp(res, "launched"))
			s->results_launched++;
		else if (res && (!strcmp(res, "already_running") ||
				 !strcmp(res, "already_finished")))
			s->results_already++;
	}
	pthread_mutex_unlock(&g.lock);
	return 0;
}

static void *agent_main(void *arg)
{
	struct site *s = arg;
	struct mer_agent_loop_opts o = {0};
	char err[512] = "";

	o.cfg = &s->cfg;
	o.key = &s->kp;
	o.stop = &g.stop;
	o.poll_wait_ms = 300;
	s->rv = mer_agent_loop_run(&o, err, sizeof(err));
	if (s->rv)
		fprintf(stderr, "%s: %s\n", s->name, err);
	return NULL;
}

static int write_file(const char *path, const char *text)
{
	FILE *f = fopen(path, "w");
	if (!f)
		return MER_EIO;
	fputs(text, f);
	return fclose(f) ? MER_EIO : 0;
}

static int counts_reached(int (*pred)(const struct site *), int want,
			  int timeout_ms)
{
	long long end = t_now_ms() + timeout_ms;
	int n = 0;

	while (t_now_ms() < end) {
		n = 0;
		pthread_mutex_lock(&g.lock);
		for (int i = 0; i < NAGENTS; i++)
			n += pred(&g.sites[i]);
		pthread_mutex_unlock(&g.lock);
		if (n >= want)
			return n;
		t_sleep_ms(100);
	}
	return n;
}

static int has_summary(const struct site *s)
{
	return s->summaries > 0 && s->valid;
}

static int has_finished(const struct site *s)
{
	return s->finished_ev > 0;
}

static int has_already(const struct site *s)
{
	return s->results_already > 0;
}

static void test_many_agents(void)
{
	struct mer_link_server *srv = NULL;
	struct mer_link_server_opts so = {0};
	struct mer_link_server_ops ops = {0};
	char sim[512], cfg[2048], err[512], url[256];
	long long t0 = t_now_ms();
	int i, n;

	mer_log_set_level(MER_LOG_ERROR);
	g.sites = calloc(NAGENTS, sizeof(*g.sites));
	T_ASSERT(g.sites != NULL);
	T_OK(t_tmpdir("agent-link", &g.dir));
	T_OK(mer_keypair_generate(&g.broker));
	mer_key_fingerprint(g.broker.pk, g.broker_fp);
	snprintf(sim, sizeof(sim), "%s/site.sim.json", g.dir);
	T_OK(write_file(sim,
			"{\"version\": \"sim-scale\", \"pools\": [{\"name\": "
			"\"gpu\", \"nodes\": [{\"count\": 8, \"cpus\": 64, "
			"\"memory_mb\": 512000, \"gpus\": {\"a100\": 8}}], "
			"\"background\": {\"load\": 0.5}}]}"));
	so.url = "tcp://127.0.0.1:0";
	so.key = &g.broker;
	so.poll_max_ms = 2000;
	ops.check_key = check_key;
	ops.report = on_report;
	for (i = 0; i < NAGENTS; i++) {
		struct site *s = &g.sites[i];
		snprintf(s->name, sizeof(s->name), "sim-%03d", i);
		T_OK(mer_keypair_generate(&s->kp));
	}
	T_OK(mer_link_server_start(&so, &ops, &srv));
	snprintf(url, sizeof(url), "%s", mer_link_server_url(srv));
	for (i = 0; i < NAGENTS; i++) {
		struct site *s = &g.sites[i];
		snprintf(cfg, sizeof(cfg),
			 "{\"site\": {\"name\": \"%s\", \"region\": "
			 "\"region-%d\"},"
			 " \"scheduler\": {\"kind\": \"sim\", \"sim_file\": "
			 "\"%s\", \"time_scale\": 10},"
			 " \"prices\": {\"gpu_hour\": {\"a100\": %d.5}},"
			 " \"agent\": {\"state_file\": \"%s/%s.state\","
			 " \"broker\": \"%s\", \"broker_key\": \"%s\","
			 " \"report_interval\": \"2s\", \"poll_interval\": "
			 "\"300ms\"}}",
			 s->name, i % 7, sim, 1 + i % 4, g.dir, s->name, url,
			 g.broker_fp);
		if (mer_agent_cfg_load_string("cfg", cfg, &s->cfg, err,
					      sizeof(err))) {
			t_fail(__FILE__, __LINE__, "%s", err);
			goto out;
		}
	}
	for (i = 0; i < NAGENTS; i++) {
		if (pthread_create(&g.sites[i].thr, NULL, agent_main,
				   &g.sites[i]) == 0)
			g.sites[i].started = 1;
	}
	n = counts_reached(has_summary, NAGENTS, 60000);
	printf("    %d/%d sites reported a valid summary in %lld ms\n", n,
	       NAGENTS, t_now_ms() - t0);
	T_EQ_INT(n, NAGENTS);

	/* Launch one stage on each of NLAUNCH sites (1 s at scale 10). */
	for (i = 0; i < NLAUNCH; i++) {
		struct site *s = &g.sites[i * (NAGENTS / NLAUNCH)];
		/* attempt-scoped and per site, as the broker sends them */
		snprintf(s->stage_id, sizeof(s->stage_id), "job-%d/train#1", i);
		json_t *cmd = json_pack(
		    "{s:s, s:s, s:{s:s, s:s, s:s, s:i, s:s, s:i, s:f}}", "id",
		    "cmd-1", "type", "launch", "stage", "id", s->stage_id,
		    "command", "train.sh", "pool", "gpu", "cpus", 4,
		    "gpu_model", "a100", "gpus", 1, "duration_s", 1.0);
		T_OK(mer_link_server_queue_command(srv, s->name, cmd));
		json_decref(cmd);
	}
	n = counts_reached(has_finished, NLAUNCH, 60000);
	T_EQ_INT(n, NLAUNCH);
	/* The same launch again under a new command id. */
	for (i = 0; i < NLAUNCH; i++) {
		struct site *s = &g.sites[i * (NAGENTS / NLAUNCH)];
		json_t *cmd =
		    json_pack("{s:s, s:s, s:{s:s, s:s, s:f}}", "id", "cmd-2",
			      "type", "launch", "stage", "id", s->stage_id,
			      "command", "train.sh", "duration_s", 1.0);
		T_OK(mer_link_server_queue_command(srv, s->name, cmd));
		json_decref(cmd);
	}
	n = counts_reached(has_already, NLAUNCH, 60000);
	T_EQ_INT(n, NLAUNCH);
	t_sleep_ms(500);
	pthread_mutex_lock(&g.lock);
	for (i = 0; i < NAGENTS; i++) {
		struct site *s = &g.sites[i];
		int launched = i % (NAGENTS / NLAUNCH) == 0;
		T_EQ_INT(s->started_ev, launched ? 1 : 0);
		T_EQ_INT(s->finished_ev, launched ? 1 : 0);
		T_EQ_INT(s->other_ev, 0);
		T_EQ_INT(s->results_launched, launched ? 1 : 0);
		/* each site is its own sim cluster: its one job is its
		 * first (a shared world would number them 1..NLAUNCH) */
		if (launched)
			T_EQ_STR(s->job_id, "sim-1");
	}
	T_EQ_INT(g.bad_reports, 0);
	pthread_mutex_unlock(&g.lock);
	printf("    whole run %lld ms\n", t_now_ms() - t0);
out:
	atomic_store(&g.stop, 1);
	for (i = 0; i < NAGENTS; i++) {
		if (g.sites[i].started) {
			pthread_join(g.sites[i].thr, NULL);
			T_EQ_INT(g.sites[i].rv, 0);
		}
		mer_agent_cfg_free(&g.sites[i].cfg);
		mer_keypair_wipe(&g.sites[i].kp);
	}
	mer_link_server_stop(srv);
	mer_keypair_wipe(&g.broker);
	free(g.sites);
	t_rmtree(g.dir);
	free(g.dir);
}

static const struct t_case cases[] = {
    {"many_agents", test_many_agents},
};

T_MAIN("agent_link", cases)
