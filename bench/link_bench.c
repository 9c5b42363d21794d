/*
 * Federation link benchmark: sealed round trips per second (the real link
 * server and client, 1 KiB JSON report, ACK back) against plain nng REQ/REP
 * round trips of the same sizes over the same loopback tcp, in the same
 * run; their ratio (target >= 0.8); and handshakes per second against the
 * real server. Runs alternate plain/sealed; figures are medians, the ratio
 * the median of the back-to-back pairs' ratios.
 */
#include "common/channel.h"
#include "common/err.h"
#include "common/link.h"
#include "common/log.h"

#include <nng/nng.h>
#include <nng/protocol/reqrep0/rep.h>
#include <nng/protocol/reqrep0/req.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define RUNS 9
#define RUN_MS 500
#define PAYLOAD 1024

static double now_s(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static int cmp_d(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;
	return x < y ? -1 : x > y;
}

static double median(double *v, int n)
{
	qsort(v, (size_t)n, sizeof(*v), cmp_d);
	return n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

/* ---- plain nng echo server: 1 KiB in, "{}" out, contexts + aio ---- */

struct pw {
	nng_ctx ctx;
	nng_aio *aio;
	int sending;
};

static void plain_cb(void *arg)
{
	struct pw *w = arg;
	nng_msg *m;

	if (nng_aio_result(w->aio) != 0) {
		if (w->sending)
			nng_msg_free(nng_aio_get_msg(w->aio));
		return;
	}
	if (w->sending) {
		w->sending = 0;
		nng_ctx_recv(w->ctx, w->aio);
		return;
	}
	m = nng_aio_get_msg(w->aio);
	nng_msg_clear(m);
	nng_msg_append(m, "{}", 2);
	w->sending = 1;
	nng_aio_set_msg(w->aio, m);
	nng_ctx_send(w->ctx, w->aio);
}

static int plain_rate(const char *url, double *rate)
{
	nng_socket s;
	nng_ctx c;
	nng_aio *a;
	char payload[PAYLOAD];
	long n = 0;
	double t0, t;

	memset(payload, 'x', sizeof(payload));
	if (nng_req0_open(&s) || nng_dial(s, url, NULL, 0) ||
	    nng_ctx_open(&c, s) || nng_aio_alloc(&a, NULL, NULL))
		return -1;
	nng_socket_set_ms(s, NNG_OPT_REQ_RESENDTIME, NNG_DURATION_INFINITE);
	t0 = now_s();
	do {
		nng_msg *m;
		nng_msg_alloc(&m, 0);
		nng_msg_append(m, payload, sizeof(payload));
		nng_aio_set_msg(a, m);
		nng_ctx_send(c, a);
		nng_aio_wait(a);
		nng_ctx_recv(c, a);
		nng_aio_wait(a);
		if (nng_aio_result(a) != 0)
			return -1;
		nng_msg_free(nng_aio_get_msg(a));
		n++;
		t = now_s() - t0;
	} while (t * 1000 < RUN_MS);
	*rate = (double)n / t;
	nng_aio_free(a);
	nng_close(s);
	return 0;
}

/* ---- sealed: the real link ---- */

static uint8_t site_pk[32];

static int hk_check(void *arg, const uint8_t pk[32], char site[128])
{
	(void)arg;
	if (memcmp(pk, site_pk, 32) != 0)
		return MER_ENOTFOUND;
	snprintf(site, 128, "bench");
	return 0;
}

static int hk_report(void *arg, const char *site, json_t *report)
{
	(void)arg;
	(void)site;
	(void)report;
	return 0;
}

static int sealed_rate(struct mer_link_client *c, const json_t *report,
		       double *rate)
{
	long n = 0;
	double t0 = now_s(), t;

	do {
		if (mer_link_client_report(c, report, 0) != 0)
			return -1;
		n++;
		t = now_s() - t0;
	} while (t * 1000 < RUN_MS);
	*rate = (double)n / t;
	return 0;
}

static int handshake_rate(const char *url, const struct mer_keypair *site,
			  const char *fp, double *rate)
{
	nng_socket s;
	long n = 0;
	double t0, t;

	if (nng_req0_open(&s) || nng_dial(s, url, NULL, 0))
		return -1;
	nng_socket_set_ms(s, NNG_OPT_REQ_RESENDTIME, NNG_DURATION_INFINITE);
	t0 = now_s();
	do {
		struct mer_chan_hello hs;
		struct mer_chan_session ses;
		nng_msg *m;
		int status = -1;

		if (mer_chan_hello_make(&hs, site, 0) != 0 ||
		    nng_msg_alloc(&m, sizeof(hs.msg)) != 0)
			return -1;
		memcpy(nng_msg_body(m), hs.msg, sizeof(hs.msg));
		if (nng_sendmsg(s, m, 0) != 0 || nng_recvmsg(s, &m, 0) != 0)
			return -1;
		int rv =
		    mer_chan_hello_finish(&hs, nng_msg_body(m), nng_msg_len(m),
					  fp, &ses, &status, NULL);
		nng_msg_free(m);
		mer_chan_hello_wipe(&hs);
		mer_chan_session_wipe(&ses);
		if (rv != 0 || status != 0)
			return -1;
		n++;
		t = now_s() - t0;
	} while (t * 1000 < RUN_MS);
	*rate = (double)n / t;
	nng_close(s);
	return 0;
}

int main(void)
{
	struct mer_keypair bkey, skey;
	char fp[MER_KEY_FP_SIZE], plain_url[128];
	struct mer_link_server *srv = NULL;
	struct mer_link_client *cli = NULL;
	struct pw pws[8];
	nng_socket ps;
	nng_listener pl;
	int port = 0;
	double sealed[RUNS], plain[RUNS], ratios[RUNS], hs[3];
	char pad[PAYLOAD];

	mer_log_set_level(MER_LOG_WARN);
	if (mer_keypair_generate(&bkey) || mer_keypair_generate(&skey))
		return 1;
	memcpy(site_pk, skey.pk, 32);
	mer_key_fingerprint(bkey.pk, fp);

	/* plain server */
	if (nng_rep0_open(&ps) ||
	    nng_listener_create(&pl, ps, "tcp://127.0.0.1:0") ||
	    nng_listener_start(pl, 0) ||
	    nng_listener_get_int(pl, NNG_OPT_TCP_BOUND_PORT, &port))
		return 1;
	snprintf(plain_url, sizeof(plain_url), "tcp://127.0.0.1:%d", port);
	for (int i = 0; i < 8; i++) {
		pws[i].sending = 0;
		if (nng_ctx_open(&pws[i].ctx, ps) ||
		    nng_aio_alloc(&pws[i].aio, plain_cb, &pws[i]))
			return 1;
		nng_ctx_recv(pws[i].ctx, pws[i].aio);
	}

	/* sealed server and client */
	struct mer_link_server_opts so = {
	    .url = "tcp://127.0.0.1:0", .key = &bkey, .receivers = 8};
	struct mer_link_server_ops ops = {.check_key = hk_check,
					  .report = hk_report};
	if (mer_link_server_start(&so, &ops, &srv) != 0)
		return 1;
	struct mer_link_client_opts co = {
	    .url = mer_link_server_url(srv), .key = &skey, .broker_fp = fp};
	if (mer_link_client_open(&co, &cli) != 0)
		return 1;
	/* A 1 KiB report: {"pad":"xxxx..."} of exactly PAYLOAD bytes. */
	memset(pad, 'x', sizeof(pad));
	pad[PAYLOAD - 10] = '\0';
	json_t *report = json_pack("{s:s}", "pad", pad);
	char *text = json_dumps(report, JSON_COMPACT);
	size_t report_len = strlen(text);
	free(text);

	/* warm-up, then alternate so both see the same machine state */
	double dummy;
	if (sealed_rate(cli, report, &dummy) || plain_rate(plain_url, &dummy))
		return 1;
	for (int r = 0; r < RUNS; r++) {
		if (plain_rate(plain_url, &plain[r]) ||
		    sealed_rate(cli, report, &sealed[r])) {
			fprintf(stderr, "link_bench: a run failed\n");
			return 1;
		}
		/* Each pair ran back to back: its ratio is robust to the
		 * machine's load changing between pairs. */
		ratios[r] = sealed[r] / plain[r];
	}
	for (int r = 0; r < 3; r++)
		if (handshake_rate(mer_link_server_url(srv), &skey, fp,
				   &hs[r])) {
			fprintf(stderr, "link_bench: handshake run failed\n");
			return 1;
		}
	double ms = median(sealed, RUNS), mp = median(plain, RUNS);
	double mh = median(hs, 3), ratio = median(ratios, RUNS);

	printf("federation link, tcp loopback, %zu-byte JSON report, "
	       "median of %d x %d ms runs\n",
	       report_len, RUNS, RUN_MS);
	printf("  plain nng REQ/REP   %10.0f round trips/s\n", mp);
	printf("  sealed link         %10.0f round trips/s\n", ms);
	printf("  ratio sealed/plain  %10.2f  (median of paired runs; target "
	       ">= 0.80: %s)\n",
	       ratio, ratio >= 0.8 ? "met" : "NOT met");
	printf("  handshakes          %10.0f /s (median of 3)\n", mh);
	printf("BENCH {\"bench\":\"link\",\"payload_bytes\":%zu,"
	       "\"sealed_rtt_per_sec\":%.0f,\"plain_rtt_per_sec\":%.0f,"
	       "\"ratio\":%.3f,\"runs\":%d}\n",
	       report_len, ms, mp, ratio, RUNS);
	printf(
	    "BENCH {\"bench\":\"link_handshake\",\"handshakes_per_sec\":%.0f,"
	    "\"runs\":3}\n",
	    mh);

	json_decref(report);
	mer_link_client_close(cli);
	mer_link_server_stop(srv);
	nng_close(ps);
	for (int i = 0; i < 8; i++)
		nng_aio_free(pws[i].aio);
	mer_keypair_wipe(&bkey);
	mer_keypair_wipe(&skey);
	return 0;
}
