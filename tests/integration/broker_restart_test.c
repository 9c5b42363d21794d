/*
 * Crash safety of the job store: a broker killed with SIGKILL in the middle
 * of a burst of 500 submissions from concurrent clients, then started
 * again, still has every job it answered 201 for (and the placer resumes
 * them); with Idempotency-Key retries after the restart no job is stored
 * twice.
 */
#include "tests/integration/broker_fixture.h"

#include <pthread.h>
#include <sodium.h>

#include "common/err.h"
#include "tests/harness.h"

#define CLIENTS 16
#define TOTAL 500

static struct bfx F;

struct client {
	int index;
	int ok;		     /* 201s */
	char ids[TOTAL][32]; /* ids answered with 201 */
	int sent;	     /* requests that got any answer */
	int next;	     /* first submission not acknowledged */
	int count;	     /* submissions this client makes */
};

static struct client clients[CLIENTS];
static volatile int stop_clients;

static void job_body(char *buf, size_t n, int client, int i)
{
	snprintf(buf, n,
		 "{\"name\": \"burst-%d-%d\", \"stages\": [{\"name\": \"s\", "
		 "\"kind\": \"generic\", \"resources\": {\"cpu\": 1, "
		 "\"memory_mb\": 16}, \"duration_s\": 60}]}",
		 client, i);
}

static void *client_main(void *arg)
{
	struct client *c = arg;
	CURL *h = curl_easy_init();
	char body[512], key[64];

	int busy = 0;

	for (int i = c->next; i < c->count && !stop_clients; i++) {
		struct bres r;
		job_body(body, sizeof(body), c->index, i);
		snprintf(key, sizeof(key), "burst-%d-%d", c->index, i);
		if (bfx_req_on(h, &F, "POST", "/v1/jobs", BFX_ACME, body,
			       strlen(body), key, &r) != 0) {
			bres_clear(&r);
			break; /* broker gone */
		}
		if (r.status == 201 && bres_str(&r, "id")) {
			snprintf(c->ids[c->ok++], 32, "%s", bres_str(&r, "id"));
			c->next = i + 1;
		}
		c->sent++;
		long status = r.status;
		bres_clear(&r);
		if (status == 409 && busy++ < 40) {
			/* The crashed broker's reservation: it goes with
			 * its lease. Retry as Retry-After says. */
			t_sleep_ms(500);
			i--;
			continue;
		}
		if (status != 201)
			break;
	}
	curl_easy_cleanup(h);
	return NULL;
}

static void test_sigkill_mid_burst(void)
{
	pthread_t t[CLIENTS];
	int acked = 0;

	if (sodium_init() < 0)
		return;
	curl_global_init(CURL_GLOBAL_DEFAULT);
	T_OK(bfx_start(&F, ""));
	for (int i = 0; i < CLIENTS; i++) {
		clients[i].index = i;
		/* TOTAL need not divide by CLIENTS: the first
		 * TOTAL % CLIENTS clients send one more. */
		clients[i].count =
		    TOTAL / CLIENTS + (i < TOTAL % CLIENTS ? 1 : 0);
		T_ASSERT(
		    pthread_create(&t[i], NULL, client_main, &clients[i]) == 0);
	}
	/* Let some of the burst through, then crash the broker. */
	long long end = t_now_ms() + 10000;
	for (;;) {
		int n = 0;
		for (int i = 0; i < CLIENTS; i++)
			n += clients[i].ok;
		if (n >= TOTAL / 4 || t_now_ms() > end)
			break;
		t_sleep_ms(2);
	}
	bfx_kill(&F, SIGKILL);
	for (int i = 0; i < CLIENTS; i++)
		pthread_join(t[i], NULL);
	for (int i = 0; i < CLIENTS; i++)
		acked += clients[i].ok;
	printf("    acknowledged before the crash: %d\n", acked);
	T_EXPECT(acked >= TOTAL / 4);
	T_EXPECT(acked < TOTAL);

	T_OK(bfx_spawn(&F));
	/* Every 201 survived. */
	for (int i = 0; i < CLIENTS; i++)
		for (int k = 0; k < clients[i].ok; k++) {
			struct bres r;
			char path[64];
			snprintf(path, sizeof(path), "/v1/jobs/%s",
				 clients[i].ids[k]);
			T_OK(
			    bfx_req(&F, "GET", path, BFX_ACME, NULL, NULL, &r));
			if (r.status != 200)
				t_fail(__FILE__, __LINE__, "job %s lost: %ld",
				       clients[i].ids[k], r.status);
			bres_clear(&r);
		}
	/* The clients retry what was not acknowledged, with the same keys:
	 * the whole burst ends up stored exactly once. */
	for (int i = 0; i < CLIENTS; i++)
		T_ASSERT(
		    pthread_create(&t[i], NULL, client_main, &clients[i]) == 0);
	for (int i = 0; i < CLIENTS; i++)
		pthread_join(t[i], NULL);
	acked = 0;
	for (int i = 0; i < CLIENTS; i++)
		acked += clients[i].ok;
	T_EQ_INT(acked, TOTAL);

	/* Count what etcd holds: one job per (client, i). */
	char prefix[] = "/meridian/job-index/acme/";
	struct mer_etcd_range rg = {0};
	T_OK(mer_etcd_range_prefix(F.cli, prefix, strlen(prefix), NULL, 0, 0, 0,
				   0, &rg, NULL));
	T_EQ_INT(rg.n, TOTAL);
	mer_etcd_range_clear(&rg);

	/* The restarted placer went through every job it found: each is
	 * placed, or pending with the engine's reasons (the policy's
	 * concurrent-stage quota holds some back). */
	end = t_now_ms() + 30000;
	size_t visited = 0, placed = 0;
	while (t_now_ms() < end) {
		char jp[] = "/meridian/jobs/";
		visited = placed = 0;
		T_OK(mer_etcd_range_prefix(F.cli, jp, strlen(jp), NULL, 0, 0, 0,
					   0, &rg, NULL));
		for (size_t i = 0; i < rg.n; i++) {
			json_t *j = json_loads(rg.kvs[i].value, 0, NULL);
			visited += json_object_get(j, "placement") != NULL;
			if (!json_object_get(j, "placement") &&
			    t_now_ms() > end - 300)
				printf("    not visited: %.*s\n",
				       (int)rg.kvs[i].value_len,
				       rg.kvs[i].value);
			placed += strcmp(json_string_value(
					     json_object_get(j, "state")),
					 "placed") == 0;
			json_decref(j);
		}
		mer_etcd_range_clear(&rg);
		if (visited == TOTAL)
			break;
		t_sleep_ms(200);
	}
	printf("    placed %zu, visited %zu\n", placed, visited);
	T_EQ_INT(visited, TOTAL);
	T_EXPECT(placed > 0);
	T_EQ_INT(bfx_stop_checked(&F), 0);
	bfx_free(&F);
}

static const struct t_case cases[] = {
    {"sigkill_mid_burst", test_sigkill_mid_burst},
};

T_MAIN("broker_restart", cases)
