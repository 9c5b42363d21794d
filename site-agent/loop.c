/*
 * The link loop (see loop.h). Summaries go through the link's outbox
 * (fire and forget, one at a time); stage events and command results are
 * sent synchronously and dropped from the state file only once the broker
 * has acknowledged them, so a crash or a broker restart loses none.
 */
#include "site-agent/loop.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "common/err.h"
#include "common/link.h"
#include "common/log.h"
#include "site-agent/runner.h"

static long long mono_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void sleep_ms(int ms)
{
	struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
	while (nanosleep(&ts, &ts) != 0)
		;
}

#define MAX_BROKERS 8

/* "tcp://a:7400,tcp://b:7400": the brokers of one federation (they share
 * its key, so one pin fits all). Splits in place into urls; returns how
 * many. */
static size_t split_brokers(char *list, char *urls[MAX_BROKERS])
{
	size_t n = 0;
	char *save = NULL;

	for (char *t = strtok_r(list, ", ", &save); t && n < MAX_BROKERS;
	     t = strtok_r(NULL, ", ", &save))
		urls[n++] = t;
	return n;
}

/* Another broker may lead now: one that is unreachable, times out or
 * says it does not lead (PROTOCOL.md "Several brokers"). */
static int try_next_broker(int rv)
{
	return rv == MER_EUNREACHABLE || rv == MER_ETIMEDOUT ||
	       rv == MER_ENOTLEADER || rv == MER_ECLOSED;
}

/* Closes c and dials the next broker of the list. */
static int rotate(struct mer_link_client **c, struct mer_link_client_opts *lo,
		  char *urls[], size_t n, size_t *at, int why)
{
	size_t next = (*at + 1) % n;

	mer_warn("trying another broker", "from=%s to=%s why=%s", urls[*at],
		 urls[next], mer_errname(why));
	mer_link_client_close(*c);
	*c = NULL;
	*at = next;
	lo->url = urls[next];
	return mer_link_client_open(lo, c);
}

/* The summary without its heartbeat, to tell a change from a tick. */
static char *summary_key(json_t *s)
{
	json_t *c = json_deep_copy(s);
	char *t;

	if (!c)
		return NULL;
	json_object_del(json_object_get(c, "site"), "last_heartbeat");
	t = json_dumps(c, JSON_COMPACT | JSON_SORT_KEYS);
	json_decref(c);
	return t;
}

int mer_agent_loop_run(const struct mer_agent_loop_opts *o, char *err,
		       size_t errlen)
{
	const struct mer_agent_cfg *cfg = o->cfg;
	struct mer_agent *a = NULL;
	struct mer_link_client *c = NULL;
	struct mer_link_client_opts lo = {0};
	char *last = NULL;
	long long next_report = 0, next_probe = 0, next_send = 0;
	unsigned long seq = 0;
	int wait = o->poll_wait_ms, rv, backoff = 0;
	json_t *results = json_array();
	char *list = NULL, *urls[MAX_BROKERS];
	size_t nurls = 0, at = 0;

	if (!results)
		return MER_ENOMEM;
	if (wait <= 0)
		wait = (int)(cfg->poll_interval_ms < cfg->report_interval_ms
				 ? cfg->poll_interval_ms
				 : cfg->report_interval_ms);
	if ((rv = mer_agent_open(cfg, &a, err, errlen)))
		goto out_close_link;
	lo.url = o->broker_url ? o->broker_url : cfg->broker_url;
	lo.broker_fp = o->broker_fp ? o->broker_fp : cfg->broker_key;
	lo.key = o->key;
	if (lo.url && (list = strdup(lo.url)) != NULL)
		nurls = split_brokers(list, urls);
	lo.url = nurls ? urls[0] : NULL;
	if (!lo.url || !*lo.url || !lo.broker_fp || !*lo.broker_fp) {
		snprintf(err, errlen,
			 "no broker URL or broker key: set "
			 "agent.broker and agent.broker_key");
		rv = MER_EINVAL;
		goto out_close_link;
	}
	if ((rv = mer_link_client_open(&lo, &c))) {
		snprintf(err, errlen, "cannot open the link to %s: %s", lo.url,
			 mer_strerror(rv));
		goto out_close_link;
	}
	mer_info("agent running", "site=%s broker=%s scheduler=%s", cfg->name,
		 lo.url, mer_agent_sched_name(cfg->kind));
	while (!atomic_load(o->stop)) {
		long long now = mono_ms();
		json_t *sum = NULL, *cmds = NULL, *ev;
		char *key;
		size_t i;

		if (now >= next_probe) {
			mer_agent_probe(a); /* failures mark the site down */
			next_probe = now + cfg->report_interval_ms;
		}
		mer_agent_tick(a);
		if (mer_agent_summary(a, &sum) == 0) {
			key = summary_key(sum);
			if (key &&
			    (!last || strcmp(key, last) != 0 ||
			     now >= next_report) &&
			    mer_link_client_queued(c) == 0) {
				json_object_set_new(sum, "type",
						    json_string("summary"));
				char id[64];
				snprintf(id, sizeof(id), "sum-%lld-%lu",
					 (long long)time(NULL), ++seq);
				json_object_set_new(sum, "id", json_string(id));
				if (mer_link_client_enqueue(c, sum) == 0) {
					sum = NULL;
					free(last);
					last = key;
					key = NULL;
					next_report =
					    now + cfg->report_interval_ms;
				}
			}
			free(key);
			json_decref(sum);
		}
		/* Events and results: synchronously, kept until acked. */
		ev = mer_agent_events(a);
		if (now >= next_send &&
		    (json_array_size(ev) || json_array_size(results))) {
			char id[64];
			json_t *rep;
			snprintf(id, sizeof(id), "ev-%lld-%lu",
				 (long long)time(NULL), ++seq);
			rep = json_pack("{s:s, s:s, s:O, s:O}", "type",
					"events", "id", id, "events", ev,
					"results", results);
			rv = rep ? mer_link_client_report(c, rep, 0)
				 : MER_ENOMEM;
			json_decref(rep);
			if (rv == MER_EREVOKED)
				goto revoked;
			if (rv && nurls > 1 && try_next_broker(rv)) {
				/* Kept until acknowledged: sent again to
				 * the next broker at once. */
				json_decref(ev);
				if ((rv =
					 rotate(&c, &lo, urls, nurls, &at, rv)))
					goto out_rotate_failed;
				continue;
			}
			if (rv == 0) {
				json_t *ids = json_array();
				json_array_foreach (ev, i, rep)
					json_array_append(
					    ids, json_object_get(rep, "id"));
				mer_agent_ack_events(a, ids);
				json_decref(ids);
				json_array_clear(results);
				backoff = 0;
			} else {
				backoff = backoff ? backoff * 2 : 200;
				if (backoff > 10000)
					backoff = 10000;
				next_send = mono_ms() + backoff;
			}
		}
		json_decref(ev);
		rv = mer_link_client_poll(c, wait, &cmds);
		if (rv == MER_EREVOKED)
			goto revoked;
		if (rv) {
			json_decref(cmds);
			if (nurls > 1 && try_next_broker(rv)) {
				if ((rv =
					 rotate(&c, &lo, urls, nurls, &at, rv)))
					goto out_rotate_failed;
				continue;
			}
			sleep_ms(wait < 200 ? wait : 200);
			continue;
		}
		json_t *cmd;
		json_array_foreach (cmds, i, cmd) {
			json_t *reply = NULL;
			mer_agent_command(a, cmd, &reply);
			if (reply)
				json_array_append_new(results, reply);
		}
		json_decref(cmds);
	}
	rv = 0;
	mer_link_client_flush(c, 2000);
	goto out_close_link;
out_rotate_failed:
	snprintf(err, errlen, "cannot open the link to %s: %s", lo.url,
		 mer_strerror(rv));
	goto out_close_link;
revoked:
	snprintf(err, errlen, "the broker revoked this site");
	mer_error("site revoked; stopping", "site=%s", cfg->name);
	rv = MER_EREVOKED;
out_close_link:
	free(last);
	free(list);
	json_decref(results);
	mer_link_client_close(c);
	mer_agent_close(a);
	return rv;
}
