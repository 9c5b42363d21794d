/*
 * Integration tests for common/link: a real server and real clients over
 * tcp on 127.0.0.1 (ports picked at run time) and ipc. Round trips,
 * long-polls, re-keys, broker restarts, and every attack the protocol must
 * reject and count, played with a raw nng REQ socket and the channel API.
 */
#include "common/channel.h"
#include "common/err.h"
#include "common/link.h"
#include "common/log.h"
#include "tests/harness.h"
#include "tests/lib/proc.h"

#include <nng/nng.h>
#include <nng/protocol/reqrep0/rep.h>
#include <nng/protocol/reqrep0/req.h>
#include <pthread.h>
#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>

/* ---- a broker stand-in: registered keys and received reports ---- */

struct reg {
	pthread_mutex_t mu;
	struct {
		uint8_t pk[32];
		char site[64];
		int revoked;
	} e[16];
	int n;
	json_t *reports; /* [{"site":..., "report":...}] */
	int polls;
};

static int hk_check(void *arg, const uint8_t pk[32], char site[128])
{
	struct reg *r = arg;
	int rv = MER_ENOTFOUND;

	pthread_mutex_lock(&r->mu);
	for (int i = 0; i < r->n; i++) {
		if (memcmp(r->e[i].pk, pk, 32) != 0)
			continue;
		if (r->e[i].revoked) {
			rv = MER_EREVOKED;
		} else {
			snprintf(site, 128, "%s", r->e[i].site);
			rv = 0;
		}
	}
	pthread_mutex_unlock(&r->mu);
	return rv;
}

static int hk_report(void *arg, const char *site, json_t *report)
{
	struct reg *r = arg;

	pthread_mutex_lock(&r->mu);
	json_array_append_new(r->reports, json_pack("{s:s, s:O}", "site", site,
						    "report", report));
	pthread_mutex_unlock(&r->mu);
	return 0;
}

static void hk_poll(void *arg, const char *site)
{
	struct reg *r = arg;

	(void)site;
	pthread_mutex_lock(&r->mu);
	r->polls++;
	pthread_mutex_unlock(&r->mu);
}

static size_t reports_n(struct reg *r)
{
	size_t n;

	pthread_mutex_lock(&r->mu);
	n = json_array_size(r->reports);
	pthread_mutex_unlock(&r->mu);
	return n;
}

static void reg_add(struct reg *r, const uint8_t pk[32], const char *site)
{
	pthread_mutex_lock(&r->mu);
	memcpy(r->e[r->n].pk, pk, 32);
	snprintf(r->e[r->n].site, sizeof(r->e[0].site), "%s", site);
	r->e[r->n].revoked = 0;
	r->n++;
	pthread_mutex_unlock(&r->mu);
}

static void reg_revoke(struct reg *r, const char *site)
{
	pthread_mutex_lock(&r->mu);
	for (int i = 0; i < r->n; i++)
		if (strcmp(r->e[i].site, site) == 0)
			r->e[i].revoked = 1;
	pthread_mutex_unlock(&r->mu);
}

/* ---- fixture ---- */

struct fx {
	struct reg reg;
	struct mer_keypair bkey, skey;
	char fp[MER_KEY_FP_SIZE];
	char url[256];
	struct mer_link_server_opts so;
	struct mer_link_server_ops ops;
	struct mer_link_server *srv;
	struct mer_link_client *cli;
	char *tmp;
};

static struct fx F;

static int fx_server(struct fx *f)
{
	f->so.url = f->url;
	f->so.key = &f->bkey;
	if (mer_link_server_start(&f->so, &f->ops, &f->srv) != 0)
		return -1;
	snprintf(f->url, sizeof(f->url), "%s", mer_link_server_url(f->srv));
	return 0;
}

static int fx_client(struct fx *f, const struct mer_keypair *key,
		     const char *fp, struct mer_link_client **out)
{
	struct mer_link_client_opts o = {.url = f->url,
					 .key = key,
					 .broker_fp = fp,
					 .request_timeout_ms = 3000,
					 .retry_min_ms = 20,
					 .retry_max_ms = 200};
	return mer_link_client_open(&o, out);
}

/* Server on url (NULL: tcp on a free loopback port) and one client for a
 * registered site "east-1". */
static int fx_start(const char *url, size_t max_payload, uint32_t rekey_msgs)
{
	struct fx *f = &F;

	memset(f, 0, sizeof(*f));
	pthread_mutex_init(&f->reg.mu, NULL);
	f->reg.reports = json_array();
	if (mer_keypair_generate(&f->bkey) || mer_keypair_generate(&f->skey))
		return -1;
	mer_key_fingerprint(f->bkey.pk, f->fp);
	reg_add(&f->reg, f->skey.pk, "east-1");
	f->ops = (struct mer_link_server_ops){.check_key = hk_check,
					      .report = hk_report,
					      .poll = hk_poll,
					      .arg = &f->reg};
	f->so.max_payload = max_payload;
	f->so.rekey_after_msgs = rekey_msgs;
	f->so.receivers = 4;
	snprintf(f->url, sizeof(f->url), "%s", url ? url : "tcp://127.0.0.1:0");
	if (fx_server(f) != 0)
		return -1;
	return fx_client(f, &f->skey, f->fp, &f->cli);
}

static void fx_stop(void)
{
	mer_link_client_close(F.cli);
	mer_link_server_stop(F.srv);
	json_decref(F.reg.reports);
	pthread_mutex_destroy(&F.reg.mu);
	if (F.tmp) {
		t_rmtree(F.tmp);
		free(F.tmp);
	}
	memset(&F, 0, sizeof(F));
}

static struct mer_link_stats srv_stats(void)
{
	struct mer_link_stats st;

	mer_link_server_get_stats(F.srv, &st);
	return st;
}

static json_t *report(int seq)
{
	return json_pack("{s:i, s:s}", "seq", seq, "kind", "summary");
}

/* ---- raw attacker: a bare REQ socket and the channel API ---- */

struct raw {
	nng_socket s;
	struct mer_chan_session ch;
};

static int raw_open(struct raw *r)
{
	memset(r, 0, sizeof(*r));
	if (nng_req0_open(&r->s) != 0)
		return -1;
	nng_socket_set_ms(r->s, NNG_OPT_REQ_RESENDTIME, NNG_DURATION_INFINITE);
	nng_socket_set_ms(r->s, NNG_OPT_RECVTIMEO, 3000);
	nng_socket_set_ms(r->s, NNG_OPT_SENDTIMEO, 3000);
	return nng_dial(r->s, F.url, NULL, 0) == 0 ? 0 : -1;
}

/* Sends len bytes, returns the reply (malloc'd) or NULL. */
static uint8_t *raw_xchg(struct raw *r, const void *buf, size_t len,
			 size_t *rlen)
{
	nng_msg *m;
	uint8_t *out;

	if (nng_msg_alloc(&m, len) != 0)
		return NULL;
	memcpy(nng_msg_body(m), buf, len);
	if (nng_sendmsg(r->s, m, 0) != 0) {
		nng_msg_free(m);
		return NULL;
	}
	if (nng_recvmsg(r->s, &m, 0) != 0)
		return NULL;
	*rlen = nng_msg_len(m);
	out = malloc(*rlen ? *rlen : 1);
	memcpy(out, nng_msg_body(m), *rlen);
	nng_msg_free(m);
	return out;
}

static int raw_handshake(struct raw *r, const struct mer_keypair *key,
			 int *status)
{
	struct mer_chan_hello hs;
	uint8_t *w;
	size_t wl = 0;
	int rv = -1;

	if (mer_chan_hello_make(&hs, key, 0) != 0)
		return -1;
	w = raw_xchg(r, hs.msg, sizeof(hs.msg), &wl);
	if (w)
		rv = mer_chan_hello_finish(&hs, w, wl, F.fp, &r->ch, status,
					   NULL);
	free(w);
	mer_chan_hello_wipe(&hs);
	return rv;
}

static int raw_seal(struct raw *r, int type, const char *text, uint8_t *out,
		    size_t *n)
{
	return mer_chan_seal(&r->ch, type, (const uint8_t *)text, strlen(text),
			     out, 4096, n);
}

/* Opens a sealed reply to the request req (its first 20 bytes) and
 * returns the ERROR code in it, 0 for another type, -1 if it does not open. */
static int raw_error_code(struct raw *r, const uint8_t *rep, size_t rl,
			  const uint8_t *req)
{
	uint8_t pt[4096];
	size_t ptn = 0;
	int type = 0, code = -1;
	json_t *o;

	if (!rep || mer_chan_open_reply(&r->ch, rep, rl, req, &type, pt,
					sizeof(pt), &ptn, NULL) != 0)
		return -1;
	if (type != MER_WIRE_ERROR)
		return 0;
	o = json_loadb((const char *)pt, ptn, 0, NULL);
	if (json_is_integer(json_object_get(o, "code")))
		code = (int)json_integer_value(json_object_get(o, "code"));
	json_decref(o);
	return code;
}

/* The reply is a NOTICE with this reason? */
static int is_notice(const uint8_t *m, size_t n, int reason)
{
	uint16_t code;
	uint8_t why;

	return m && mer_chan_notice_parse(m, n, &code, &why) == 0 &&
	       why == reason;
}

/* The fixture broker and a raw session that completed its handshake
 * (*status: the handshake's status). On failure nothing is left open. */
static int raw_session(struct raw *r, int *status)
{
	if (fx_start(NULL, 0, 0) != 0)
		return -1;
	if (raw_open(r) == 0 && raw_handshake(r, &F.skey, status) == 0)
		return 0;
	nng_close(r->s);
	fx_stop();
	return -1;
}

static void raw_session_close(struct raw *r)
{
	nng_close(r->s);
	fx_stop();
}

/* Sends len bytes of m: is the reply a NOTICE with this reason? */
static int xchg_notice(struct raw *r, const uint8_t *m, size_t len, int reason)
{
	size_t rl = 0;
	uint8_t *rep = raw_xchg(r, m, len, &rl);
	int yes = is_notice(rep, rl, reason);

	free(rep);
	return yes;
}

/* Sends the sealed request m: the code of the sealed ERROR in the reply
 * (as raw_error_code). */
static int xchg_error(struct raw *r, const uint8_t *m, size_t len)
{
	size_t rl = 0;
	uint8_t *rep = raw_xchg(r, m, len, &rl);
	int code = raw_error_code(r, rep, rl, m);

	free(rep);
	return code;
}

/* ---- round trips ---- */

static void roundtrip(void)
{
	char **names = NULL;
	size_t n = 0;

	for (int i = 0; i < 20; i++) {
		json_t *r = report(i);
		T_OK(mer_link_client_report(F.cli, r, 0));
		json_decref(r);
	}
	T_EQ_INT(reports_n(&F.reg), 20);
	json_t *last = json_array_get(F.reg.reports, 19);
	T_EQ_STR(json_string_value(json_object_get(last, "site")), "east-1");
	T_EQ_INT(json_integer_value(
		     json_object_get(json_object_get(last, "report"), "seq")),
		 19);
	struct mer_link_stats st = srv_stats();
	T_EQ_INT(st.handshakes, 1);
	T_EQ_INT(st.reports, 20);
	T_EQ_INT(st.messages_in, 20);
	for (int i = 0; i < MER_CHAN_R_COUNT; i++)
		T_EQ_INT(st.rejected[i], 0);
	T_OK(mer_link_server_sites(F.srv, &names, &n));
	T_EQ_INT(n, 1);
	if (n == 1)
		T_EQ_STR(names[0], "east-1");
	mer_link_names_free(names, n);
}

static void test_tcp_roundtrip(void)
{
	T_ASSERT(fx_start(NULL, 0, 0) == 0);
	T_EXPECT(strncmp(F.url, "tcp://127.0.0.1:", 16) == 0);
	T_EXPECT(strcmp(F.url, "tcp://127.0.0.1:0") != 0);
	roundtrip();
	fx_stop();
}

static void test_ipc_roundtrip(void)
{
	char *dir = NULL, url[300];

	T_ASSERT(t_tmpdir("link", &dir) == 0);
	snprintf(url, sizeof(url), "ipc://%s/broker.sock", dir);
	if (fx_start(url, 0, 0) == 0)
		roundtrip();
	else
		t_fail(__FILE__, __LINE__, "fixture on %s", url);
	F.tmp = dir;
	fx_stop();
}

/* ---- long-poll ---- */

struct poller {
	struct mer_link_client *c;
	int wait_ms;
	int rv;
	json_t *cmds;
	long long ms;
};

static void *poll_thread(void *arg)
{
	struct poller *p = arg;
	long long t0 = t_now_ms();

	p->rv = mer_link_client_poll(p->c, p->wait_ms, &p->cmds);
	p->ms = t_now_ms() - t0;
	return NULL;
}

static void test_longpoll_prompt(void)
{
	struct poller p = {0};
	pthread_t th;
	json_t *cmds = NULL;

	T_ASSERT(fx_start(NULL, 0, 0) == 0);
	/* Nothing queued: an empty answer after the wait. */
	T_OK(mer_link_client_poll(F.cli, 300, &cmds));
	T_EQ_INT(json_array_size(cmds), 0);
	json_decref(cmds);

	p.c = F.cli;
	p.wait_ms = 20000;
	T_ASSERT(pthread_create(&th, NULL, poll_thread, &p) == 0);
	t_sleep_ms(300);
	json_t *cmd = json_pack("{s:s, s:s}", "id", "c-1", "op", "launch");
	long long t0 = t_now_ms();
	T_OK(mer_link_server_queue_command(F.srv, "east-1", cmd));
	T_EQ_INT(mer_link_server_queue_command(F.srv, "east-1", cmd),
		 MER_EEXIST);
	json_decref(cmd);
	pthread_join(th, NULL);
	long long lag = t_now_ms() - t0;
	T_OK(p.rv);
	T_EXPECT(lag < 500); /* answered at once, not at the 20 s timeout */
	T_EQ_INT(json_array_size(p.cmds), 1);
	T_EQ_STR(
	    json_string_value(json_object_get(json_array_get(p.cmds, 0), "id")),
	    "c-1");
	json_decref(p.cmds);
	/* Not acknowledged yet: still pending; the next poll acks it. */
	T_EQ_INT(mer_link_server_pending(F.srv, "east-1"), 1);
	T_OK(mer_link_client_poll(F.cli, 0, &cmds));
	T_EQ_INT(json_array_size(cmds), 0);
	json_decref(cmds);
	T_EQ_INT(mer_link_server_pending(F.srv, "east-1"), 0);
	T_EXPECT(F.reg.polls >= 3);
	fx_stop();
}

static void test_report_while_polling(void)
{
	struct poller p = {0};
	pthread_t th;

	T_ASSERT(fx_start(NULL, 0, 0) == 0);
	p.c = F.cli;
	p.wait_ms = 5000;
	T_ASSERT(pthread_create(&th, NULL, poll_thread, &p) == 0);
	t_sleep_ms(200);
	long long t0 = t_now_ms();
	for (int i = 0; i < 5; i++) {
		json_t *r = report(i);
		T_OK(mer_link_client_report(F.cli, r, 0));
		json_decref(r);
	}
	T_EXPECT(t_now_ms() - t0 < 2000);
	T_EQ_INT(reports_n(&F.reg), 5);
	json_t *cmd = json_pack("{s:s}", "id", "wake");
	T_OK(mer_link_server_queue_command(F.srv, "east-1", cmd));
	json_decref(cmd);
	pthread_join(th, NULL);
	T_OK(p.rv);
	T_EQ_INT(json_array_size(p.cmds), 1);
	json_decref(p.cmds);
	fx_stop();
}

/* ---- re-key and restart: nothing lost ---- */

static int stop_polling;

static void *poll_loop(void *arg)
{
	struct mer_link_client *c = arg;

	while (!__atomic_load_n(&stop_polling, __ATOMIC_SEQ_CST)) {
		json_t *cmds = NULL;
		if (mer_link_client_poll(c, 50, &cmds) == 0)
			json_decref(cmds);
	}
	return NULL;
}

static int seqs_complete(json_t *reports, int from, int to)
{
	char *seen = calloc((size_t)(to + 1), 1);
	size_t i;
	json_t *v;
	int ok = 1;

	json_array_foreach (reports, i, v) {
		json_int_t s = json_integer_value(
		    json_object_get(json_object_get(v, "report"), "seq"));
		if (s >= from && s <= to)
			seen[s] = 1;
	}
	for (int s = from; s <= to; s++)
		if (!seen[s])
			ok = 0;
	free(seen);
	return ok;
}

static void test_rekey_no_loss(void)
{
	pthread_t th;
	struct mer_link_stats cs;

	T_ASSERT(fx_start(NULL, 0, 16) == 0);
	stop_polling = 0;
	T_ASSERT(pthread_create(&th, NULL, poll_loop, F.cli) == 0);
	for (int i = 0; i < 300; i++)
		T_OK(mer_link_client_enqueue(F.cli, report(i)));
	int rv = mer_link_client_flush(F.cli, 60000);
	__atomic_store_n(&stop_polling, 1, __ATOMIC_SEQ_CST);
	pthread_join(th, NULL);
	T_OK(rv);
	T_EQ_INT(reports_n(&F.reg), 300);
	T_EXPECT(seqs_complete(F.reg.reports, 0, 299));
	/* in order: the outbox sends one at a time */
	for (size_t i = 0; i < json_array_size(F.reg.reports); i++) {
		json_t *r =
		    json_object_get(json_array_get(F.reg.reports, i), "report");
		if (json_integer_value(json_object_get(r, "seq")) !=
		    (json_int_t)i) {
			t_fail(__FILE__, __LINE__, "report %zu out of order",
			       i);
			break;
		}
	}
	mer_link_client_get_stats(F.cli, &cs);
	struct mer_link_stats st = srv_stats();
	/* 2 sealed messages per report, re-key every 16: >= 30 sessions. */
	T_EXPECT(cs.handshakes >= 30);
	T_EQ_INT(st.handshakes, cs.handshakes);
	T_EQ_INT(st.rejected[MER_CHAN_R_REPLAY], 0);
	T_EQ_INT(st.rejected[MER_CHAN_R_AUTH_FAILED], 0);
	/* Only the newest two sessions per site are kept. */
	T_EXPECT(st.sessions <= 3);
	fx_stop();
}

static void test_broker_restart(void)
{
	struct mer_link_stats st;

	T_ASSERT(fx_start(NULL, 0, 0) == 0);
	for (int i = 0; i < 5; i++)
		T_OK(mer_link_client_enqueue(F.cli, report(i)));
	T_OK(mer_link_client_flush(F.cli, 10000));
	T_EQ_INT(reports_n(&F.reg), 5);
	mer_link_server_stop(F.srv);
	F.srv = NULL;
	for (int i = 5; i < 15; i++)
		T_OK(mer_link_client_enqueue(F.cli, report(i)));
	t_sleep_ms(300);
	T_EXPECT(mer_link_client_queued(F.cli) > 0);
	/* Same URL and key, no sessions: the agent is told "unknown
	 * session", handshakes again and delivers the queue. */
	T_ASSERT(fx_server(&F) == 0);
	T_OK(mer_link_client_flush(F.cli, 20000));
	T_EXPECT(seqs_complete(F.reg.reports, 0, 14));
	st = srv_stats();
	T_EXPECT(st.rejected[MER_CHAN_R_UNKNOWN_SESSION] >= 1);
	T_EQ_INT(st.handshakes, 1);
	fx_stop();
}

/* ---- attacks: each rejected and counted, never acted on ---- */

static void test_attack_replay(void)
{
	struct raw r;
	uint8_t m[4096], *rep;
	size_t n, rl;
	int status = -1;

	T_ASSERT(raw_session(&r, &status) == 0);
	T_EQ_INT(status, 0);
	T_OK(raw_seal(&r, MER_WIRE_REPORT, "{\"seq\":1}", m, &n));
	rep = raw_xchg(&r, m, n, &rl);
	T_EXPECT(rep && !is_notice(rep, rl, MER_CHAN_R_REPLAY));
	free(rep);
	T_EXPECT(xchg_notice(
	    &r, m, n, MER_CHAN_R_REPLAY)); /* the captured message, again */
	T_EQ_INT(srv_stats().rejected[MER_CHAN_R_REPLAY], 1);
	T_EQ_INT(reports_n(&F.reg), 1);
	raw_session_close(&r);
}

static void flip_case(size_t at, uint8_t mask, int reason)
{
	struct raw r;
	uint8_t m[4096];
	size_t n;
	int status = -1;

	T_ASSERT(raw_session(&r, &status) == 0);
	T_OK(raw_seal(&r, MER_WIRE_REPORT, "{\"seq\":1,\"gpus\":8}", m, &n));
	m[at < n ? at : n - 1] ^= mask;
	T_EXPECT(xchg_notice(&r, m, n, reason));
	T_EQ_INT(srv_stats().rejected[reason], 1);
	T_EQ_INT(reports_n(&F.reg), 0);
	raw_session_close(&r);
}

static void test_attack_flip_header(void)
{
	flip_case(14, 0x04, MER_CHAN_R_AUTH_FAILED);	/* a counter byte */
	flip_case(3, 0x01, MER_CHAN_R_AUTH_FAILED);	/* REPORT -> POLL */
	flip_case(3, 0x04, MER_CHAN_R_MALFORMED);	/* no such type */
	flip_case(6, 0x10, MER_CHAN_R_UNKNOWN_SESSION); /* session id */
}

static void test_attack_flip_ciphertext(void)
{
	flip_case(MER_WIRE_HDR_LEN + 3, 0x04, MER_CHAN_R_AUTH_FAILED);
	flip_case(1000, 0x80, MER_CHAN_R_AUTH_FAILED); /* in the tag */
}

static void test_attack_truncated(void)
{
	struct raw r;
	uint8_t m[4096];
	size_t n;
	int status = -1;

	T_ASSERT(raw_session(&r, &status) == 0);
	T_OK(raw_seal(&r, MER_WIRE_REPORT, "{\"seq\":1}", m, &n));
	T_EXPECT(
	    xchg_notice(&r, m, MER_WIRE_HDR_LEN + 8, MER_CHAN_R_TRUNCATED));
	T_EXPECT(xchg_notice(&r, m, n - 1,
			     MER_CHAN_R_AUTH_FAILED)); /* tag cut short */
	struct mer_link_stats st = srv_stats();
	T_EQ_INT(st.rejected[MER_CHAN_R_TRUNCATED], 1);
	T_EQ_INT(st.rejected[MER_CHAN_R_AUTH_FAILED], 1);
	T_EQ_INT(reports_n(&F.reg), 0);
	raw_session_close(&r);
}

static void test_attack_oversized(void)
{
	struct raw r;
	uint8_t *big, *rep;
	size_t rl;

	T_ASSERT(fx_start(NULL, 4096, 0) == 0);
	T_ASSERT(raw_open(&r) == 0);
	big = calloc(1, 64 * 1024);
	struct mer_wire_hdr h = {
	    .type = MER_WIRE_REPORT, .session = 1, .counter = 1};
	mer_wire_hdr_encode(&h, big);
	/* Over the protocol limit, under nng's: reaches us, counted. */
	T_EXPECT(xchg_notice(&r, big, 6000, MER_CHAN_R_OVERSIZE));
	T_EQ_INT(srv_stats().rejected[MER_CHAN_R_OVERSIZE], 1);
	/* Over NNG_OPT_RECVMAXSZ: nng drops it (and the connection). */
	nng_socket_set_ms(r.s, NNG_OPT_RECVTIMEO, 500);
	rep = raw_xchg(&r, big, 64 * 1024, &rl);
	T_EXPECT(rep == NULL);
	free(rep);
	free(big);
	/* The broker's plaintext NOTICE "oversize" cannot be trusted: the
	 * client hears a transient error. */
	json_t *pad = json_object();
	char filler[5000];
	memset(filler, 'x', sizeof(filler) - 1);
	filler[sizeof(filler) - 1] = '\0';
	json_object_set_new(pad, "pad", json_string(filler));
	T_EQ_INT(mer_link_client_report(F.cli, pad, 0), MER_EBUSY);
	/* A client told the limit refuses the payload itself, for good. */
	{
		struct mer_link_client *c = NULL;
		struct mer_link_client_opts o = {.url = F.url,
						 .key = &F.skey,
						 .broker_fp = F.fp,
						 .max_payload = 4096};
		json_t *small = report(2);
		T_ASSERT(mer_link_client_open(&o, &c) == 0);
		/* Connected first: nng 1.5.2 leaks a dialer closed while its
		 * first connect is still in flight. */
		T_OK(mer_link_client_report(c, small, 0));
		json_decref(small);
		T_EQ_INT(mer_link_client_report(c, pad, 0), MER_ETOOBIG);
		mer_link_client_close(c);
	}
	json_decref(pad);
	/* The broker still serves. */
	json_t *ok = report(1);
	T_OK(mer_link_client_report(F.cli, ok, 0));
	json_decref(ok);
	nng_close(r.s);
	fx_stop();
}

static void test_attack_garbage(void)
{
	struct raw r;
	uint8_t junk[100];

	T_ASSERT(fx_start(NULL, 0, 0) == 0);
	T_ASSERT(raw_open(&r) == 0);
	randombytes_buf(junk, sizeof(junk));
	junk[0] = 'x';
	T_EXPECT(xchg_notice(&r, junk, sizeof(junk), MER_CHAN_R_MALFORMED));
	T_EXPECT(xchg_notice(&r, junk, 0, MER_CHAN_R_MALFORMED)); /* empty */
	/* Right magic, wrong version. */
	junk[0] = 'M';
	junk[1] = 'R';
	junk[2] = 9;
	T_EXPECT(xchg_notice(&r, junk, sizeof(junk), MER_CHAN_R_VERSION));
	/* A HELLO of the wrong size. */
	junk[2] = MER_WIRE_VERSION;
	junk[3] = MER_WIRE_HELLO;
	T_EXPECT(xchg_notice(&r, junk, sizeof(junk), MER_CHAN_R_MALFORMED));
	/* A sealed type for a session that does not exist. */
	junk[3] = MER_WIRE_REPORT;
	T_EXPECT(
	    xchg_notice(&r, junk, sizeof(junk), MER_CHAN_R_UNKNOWN_SESSION));
	struct mer_link_stats st = srv_stats();
	T_EQ_INT(st.rejected[MER_CHAN_R_MALFORMED], 3);
	T_EQ_INT(st.rejected[MER_CHAN_R_VERSION], 1);
	T_EQ_INT(st.rejected[MER_CHAN_R_UNKNOWN_SESSION], 1);
	T_EQ_INT(reports_n(&F.reg), 0);
	nng_close(r.s);
	fx_stop();
}

static void test_attack_unjoined_key(void)
{
	struct mer_keypair stranger;
	struct mer_link_client *c = NULL;
	struct raw r;
	int status = -1;

	T_ASSERT(fx_start(NULL, 0, 0) == 0);
	T_OK(mer_keypair_generate(&stranger));
	T_ASSERT(raw_open(&r) == 0);
	T_OK(raw_handshake(&r, &stranger, &status));
	T_EQ_INT(status, MER_EAUTH); /* authenticated refusal */
	nng_close(r.s);
	T_ASSERT(fx_client(&F, &stranger, F.fp, &c) == 0);
	json_t *rp = report(1);
	T_EQ_INT(mer_link_client_report(c, rp, 0), MER_EAUTH);
	json_decref(rp);
	mer_link_client_close(c);
	struct mer_link_stats st = srv_stats();
	T_EQ_INT(st.rejected[MER_CHAN_R_UNREGISTERED], 2);
	T_EQ_INT(st.handshakes_refused, 2);
	T_EQ_INT(reports_n(&F.reg), 0);
	fx_stop();
}

static void test_attack_revoked_key(void)
{
	struct mer_link_client *c = NULL;
	struct poller p = {0};
	struct raw r;
	pthread_t th;
	char **names;
	uint8_t m[4096], *rep;
	size_t n, rl;
	int status = -1;

	T_ASSERT(fx_start(NULL, 0, 0) == 0);
	json_t *rp = report(1);
	T_OK(mer_link_client_report(F.cli, rp, 0));
	/* A second session of the same site, opened before revocation. */
	T_ASSERT(raw_open(&r) == 0);
	T_OK(raw_handshake(&r, &F.skey, &status));
	p.c = F.cli;
	p.wait_ms = 20000;
	T_ASSERT(pthread_create(&th, NULL, poll_thread, &p) == 0);
	t_sleep_ms(200);
	reg_revoke(&F.reg, "east-1");
	T_OK(mer_link_server_revoke(F.srv, "east-1"));
	pthread_join(th, NULL);
	T_EQ_INT(p.rv, MER_EREVOKED); /* the held poll is cut at once */
	T_EXPECT(p.ms < 2000);
	/* The next message on a live session is refused with a sealed
	 * ERROR (authentic, so the agent may act on it) and counted. */
	T_OK(raw_seal(&r, MER_WIRE_REPORT, "{\"seq\":9}", m, &n));
	rep = raw_xchg(&r, m, n, &rl);
	T_ASSERT(rep != NULL);
	{
		uint8_t pt[4096];
		size_t ptn;
		int type = 0;
		T_OK(mer_chan_open_reply(&r.ch, rep, rl, m, &type, pt,
					 sizeof(pt) - 1, &ptn, NULL));
		T_EQ_INT(type, MER_WIRE_ERROR);
		pt[ptn] = '\0';
		T_CONTAINS((char *)pt, "\"revoked\"");
	}
	free(rep);
	nng_close(r.s);
	/* Any further message: refused, counted, and the client stops. */
	T_EQ_INT(mer_link_client_report(F.cli, rp, 0), MER_EREVOKED);
	T_EQ_INT(mer_link_client_enqueue(F.cli, report(2)), MER_EREVOKED);
	/* A fresh connection with the revoked key is refused at handshake. */
	T_ASSERT(fx_client(&F, &F.skey, F.fp, &c) == 0);
	T_EQ_INT(mer_link_client_report(c, rp, 0), MER_EREVOKED);
	mer_link_client_close(c);
	json_decref(rp);
	struct mer_link_stats st = srv_stats();
	T_EXPECT(st.rejected[MER_CHAN_R_REVOKED] >= 2);
	T_EQ_INT(reports_n(&F.reg), 1);
	T_OK(mer_link_server_sites(F.srv, &names, &n));
	T_EQ_INT(n, 0);
	mer_link_names_free(names, n);
	fx_stop();
}

static void test_attack_wrong_broker_key(void)
{
	struct mer_keypair other;
	char wrong[MER_KEY_FP_SIZE];
	struct mer_link_client *c = NULL;
	struct mer_link_stats cs;

	T_ASSERT(fx_start(NULL, 0, 0) == 0);
	T_OK(mer_keypair_generate(&other));
	mer_key_fingerprint(other.pk, wrong);
	T_ASSERT(fx_client(&F, &F.skey, wrong, &c) == 0);
	json_t *rp = report(1);
	T_EQ_INT(mer_link_client_report(c, rp, 0), MER_EAUTH);
	json_decref(rp);
	mer_link_client_get_stats(c, &cs);
	T_EQ_INT(cs.rejected[MER_CHAN_R_BROKER_KEY], 1);
	T_EQ_INT(cs.handshakes, 0);
	mer_link_client_close(c);
	T_EQ_INT(reports_n(&F.reg), 0);
	fx_stop();
}

static void test_attack_bad_type_and_payload(void)
{
	struct raw r;
	uint8_t m[4096];
	size_t n;
	int status = -1;

	T_ASSERT(raw_session(&r, &status) == 0);
	/* A JOIN on a normal session: a sealed ERROR "protocol". */
	T_OK(raw_seal(&r, MER_WIRE_JOIN, "{\"token\":\"x\"}", m, &n));
	T_EQ_INT(xchg_error(&r, m, n), MER_EPROTO);
	/* Not JSON: a sealed ERROR "parse". */
	T_OK(raw_seal(&r, MER_WIRE_REPORT, "[1,2", m, &n));
	T_EQ_INT(xchg_error(&r, m, n), MER_EPARSE);
	/* A JSON array is not an object either. */
	T_OK(raw_seal(&r, MER_WIRE_REPORT, "[1,2]", m, &n));
	T_EQ_INT(xchg_error(&r, m, n), MER_EPARSE);
	/* A broker-to-agent type sent by an agent (channel.h will not seal
	 * one: relabel a request). */
	T_OK(raw_seal(&r, MER_WIRE_REPORT, "{}", m, &n));
	m[3] = MER_WIRE_ACK;
	T_EXPECT(xchg_notice(&r, m, n, MER_CHAN_R_BAD_TYPE));
	struct mer_link_stats st = srv_stats();
	T_EQ_INT(st.rejected[MER_CHAN_R_BAD_TYPE], 2);
	T_EQ_INT(st.rejected[MER_CHAN_R_BAD_PAYLOAD], 2);
	T_EQ_INT(reports_n(&F.reg), 0);
	raw_session_close(&r);
}

/* nng's REQ resend is off: a request whose connection drops is not sent
 * again by nng (that would replay a sealed message). */
static void *report_thread(void *arg)
{
	struct poller *p = arg;
	json_t *r = report(1);

	p->rv = mer_link_client_report(p->c, r, 0);
	json_decref(r);
	return NULL;
}

/* A bare REP on a loopback port picked at run time, standing in for the
 * broker: its URL goes into url and F.url. */
static int bare_rep_listen(nng_socket *rep, char *url, size_t n)
{
	nng_listener l;
	int port = 0;

	if (nng_rep0_open(rep) != 0)
		return -1;
	if (nng_listener_create(&l, *rep, "tcp://127.0.0.1:0") != 0 ||
	    nng_listener_start(l, 0) != 0 ||
	    nng_listener_get_int(l, NNG_OPT_TCP_BOUND_PORT, &port) != 0) {
		nng_close(*rep);
		return -1;
	}
	snprintf(url, n, "tcp://127.0.0.1:%d", port);
	snprintf(F.url, sizeof(F.url), "%s", url);
	nng_socket_set_ms(*rep, NNG_OPT_RECVTIMEO, 3000);
	return 0;
}

/* Drops the connection the client's request in th came on, listens again
 * on url and waits for th: the client must be told (EUNREACHABLE) and nng
 * must not have sent first again. */
static void expect_not_resent(nng_socket *rep, const char *url, pthread_t th,
			      const struct poller *p, nng_msg *first)
{
	nng_msg *again = NULL;
	int listening;

	nng_close(*rep);
	listening = nng_rep0_open(rep) == 0;
	if (listening) {
		nng_socket_set_ms(*rep, NNG_OPT_RECVTIMEO, 1500);
		listening = nng_listen(*rep, url, NULL, 0) == 0;
	}
	pthread_join(th, NULL);
	if (!listening) {
		t_fail(__FILE__, __LINE__, "cannot listen again on %s", url);
		return;
	}
	T_EQ_INT(p->rv, MER_EUNREACHABLE); /* told, not silently resent */
	if (nng_recvmsg(*rep, &again, 0) == 0) {
		T_EXPECT(first == NULL ||
			 nng_msg_len(again) != nng_msg_len(first) ||
			 memcmp(nng_msg_body(again), nng_msg_body(first),
				nng_msg_len(first)) != 0);
		nng_msg_free(again);
	}
}

static void test_no_nng_resend(void)
{
	nng_socket rep;
	nng_msg *first = NULL;
	struct mer_keypair k;
	struct mer_link_client *c = NULL;
	struct poller p = {0};
	pthread_t th;
	char url[128];

	T_OK(mer_keypair_generate(&k));
	T_ASSERT(bare_rep_listen(&rep, url, sizeof(url)) == 0);
	mer_key_fingerprint(k.pk, F.fp);
	T_ASSERT(fx_client(&F, &k, F.fp, &c) == 0);
	p.c = c;
	T_ASSERT(pthread_create(&th, NULL, report_thread, &p) == 0);
	T_EXPECT(nng_recvmsg(rep, &first, 0) == 0); /* the HELLO */
	expect_not_resent(&rep, url, th, &p, first);
	if (first)
		nng_msg_free(first);
	mer_link_client_close(c);
	nng_close(rep);
	memset(&F, 0, sizeof(F));
}

/* ---- agent side under attack: a fake broker on the path ---- */

enum fake_mode {
	FAKE_NOTICE_FIRST,  /* 1st sealed request: forged NOTICE "parse" */
	FAKE_REVOKED_FIRST, /* 1st: forged NOTICE "revoked" */
	FAKE_TAMPER_FIRST,  /* 1st: a genuine ACK with a flipped bit */
	FAKE_MISROUTE,	    /* 1st: no answer; 2nd: the ACK sealed for 1st */
};

/* Completes handshakes with the real broker key (an on-path attacker lets
 * them through to the real broker; here the fake is the broker) and plays
 * its mode on the sealed requests. */
struct fake {
	nng_socket rep;
	struct mer_keypair key;
	char url[128];
	char fp[MER_KEY_FP_SIZE];
	struct mer_chan_session ch;
	enum fake_mode mode;
	pthread_t th;
	int stop;
	int sealed;	  /* sealed requests received */
	json_t *payloads; /* their plaintexts */
	uint8_t held[256];
	size_t held_n;
};

static void fake_send(struct fake *f, const uint8_t *buf, size_t n)
{
	nng_msg *m;

	if (nng_msg_alloc(&m, n) != 0)
		return;
	memcpy(nng_msg_body(m), buf, n);
	if (nng_sendmsg(f->rep, m, 0) != 0)
		nng_msg_free(m);
}

static void *fake_main(void *arg)
{
	struct fake *f = arg;

	while (!__atomic_load_n(&f->stop, __ATOMIC_SEQ_CST)) {
		nng_msg *m;
		uint8_t out[512], pt[512];
		size_t n = 0, ptn = 0;
		int type = 0, k;

		if (nng_recvmsg(f->rep, &m, 0) != 0)
			continue;
		uint8_t *b = nng_msg_body(m);
		size_t len = nng_msg_len(m);
		if (len == MER_CHAN_HELLO_LEN && b[3] == MER_WIRE_HELLO) {
			if (mer_chan_welcome_make(&f->key, b, len, 0, 4242,
						  3600, 1u << 20, out,
						  &f->ch) == 0)
				fake_send(f, out, MER_CHAN_WELCOME_LEN);
			nng_msg_free(m);
			continue;
		}
		if (mer_chan_open(&f->ch, b, len, &type, pt, sizeof(pt), &ptn,
				  NULL) != 0) {
			nng_msg_free(m);
			continue;
		}
		k = ++f->sealed;
		json_array_append_new(f->payloads,
				      json_stringn((char *)pt, ptn));
		if (k == 1 && (f->mode == FAKE_NOTICE_FIRST ||
			       f->mode == FAKE_REVOKED_FIRST)) {
			mer_chan_notice_make(
			    f->mode == FAKE_NOTICE_FIRST ? MER_EPARSE
							 : MER_EREVOKED,
			    f->mode == FAKE_NOTICE_FIRST ? MER_CHAN_R_MALFORMED
							 : MER_CHAN_R_REVOKED,
			    out);
			fake_send(f, out, MER_CHAN_NOTICE_LEN);
		} else if (mer_chan_seal_reply(&f->ch, MER_WIRE_ACK, b,
					       (const uint8_t *)"{}", 2, out,
					       sizeof(out), &n) == 0) {
			if (k == 1 && f->mode == FAKE_TAMPER_FIRST) {
				out[n - 1] ^= 0x01;
			} else if (k == 1 && f->mode == FAKE_MISROUTE) {
				/* Withhold it (the agent times out) ... */
				memcpy(f->held, out, n);
				f->held_n = n;
				nng_msg_free(m);
				continue;
			} else if (k == 2 && f->mode == FAKE_MISROUTE) {
				/* ... and pass it off as this answer. */
				memcpy(out, f->held, f->held_n);
				n = f->held_n;
			}
			fake_send(f, out, n);
		}
		nng_msg_free(m);
	}
	return NULL;
}

static int fake_start(struct fake *f, enum fake_mode mode)
{
	nng_listener l;
	int port = 0;

	memset(f, 0, sizeof(*f));
	f->mode = mode;
	f->payloads = json_array();
	if (mer_keypair_generate(&f->key) != 0 || nng_rep0_open(&f->rep) ||
	    nng_listener_create(&l, f->rep, "tcp://127.0.0.1:0") ||
	    nng_listener_start(l, 0) ||
	    nng_listener_get_int(l, NNG_OPT_TCP_BOUND_PORT, &port))
		return -1;
	nng_socket_set_ms(f->rep, NNG_OPT_RECVTIMEO, 100);
	snprintf(f->url, sizeof(f->url), "tcp://127.0.0.1:%d", port);
	mer_key_fingerprint(f->key.pk, f->fp);
	return pthread_create(&f->th, NULL, fake_main, f) == 0 ? 0 : -1;
}

static void fake_stop(struct fake *f)
{
	__atomic_store_n(&f->stop, 1, __ATOMIC_SEQ_CST);
	pthread_join(f->th, NULL);
	nng_close(f->rep);
	json_decref(f->payloads);
	mer_chan_session_wipe(&f->ch);
}

static int fake_client(struct fake *f, const struct mer_keypair *k,
		       int timeout_ms, struct mer_link_client **c)
{
	struct mer_link_client_opts o = {.url = f->url,
					 .key = k,
					 .broker_fp = f->fp,
					 .request_timeout_ms = timeout_ms,
					 .retry_min_ms = 20,
					 .retry_max_ms = 100};
	return mer_link_client_open(&o, c);
}

/* Review finding 2: a forged NOTICE must not make the outbox drop a
 * report: it is sent again until a sealed ACK arrives. */
static void test_agent_forged_notice_keeps_report(void)
{
	struct fake f;
	struct mer_keypair k;
	struct mer_link_client *c = NULL;

	T_ASSERT(fake_start(&f, FAKE_NOTICE_FIRST) == 0);
	T_OK(mer_keypair_generate(&k));
	if (fake_client(&f, &k, 2000, &c) == 0) {
		T_OK(mer_link_client_enqueue(c,
					     json_pack("{s:s}", "id", "r-1")));
		T_OK(mer_link_client_flush(c, 5000));
		T_EQ_INT(f.sealed, 2); /* resent after the NOTICE */
		T_EQ_STR(json_string_value(json_array_get(f.payloads, 1)),
			 "{\"id\":\"r-1\"}");
	} else {
		t_fail(__FILE__, __LINE__, "client");
	}
	mer_link_client_close(c);
	fake_stop(&f);
}

/* A forged NOTICE "revoked" is not a revocation. */
static void test_agent_forged_revoked_notice(void)
{
	struct fake f;
	struct mer_keypair k;
	struct mer_link_client *c = NULL;
	json_t *r = report(1);

	T_ASSERT(fake_start(&f, FAKE_REVOKED_FIRST) == 0);
	T_OK(mer_keypair_generate(&k));
	if (fake_client(&f, &k, 2000, &c) == 0) {
		T_EQ_INT(mer_link_client_report(c, r, 0), MER_EBUSY);
		T_OK(mer_link_client_report(c, r, 0));
		T_OK(mer_link_client_enqueue(c, report(2)));
		T_OK(mer_link_client_flush(c, 5000));
	} else {
		t_fail(__FILE__, __LINE__, "client");
	}
	json_decref(r);
	mer_link_client_close(c);
	fake_stop(&f);
}

/* A tampered ACK is not an ACK: the report call fails (retryable), the
 * outbox keeps the report until a genuine ACK. */
static void test_agent_tampered_ack(void)
{
	struct fake f;
	struct mer_keypair k;
	struct mer_link_client *c = NULL;
	struct mer_link_stats cs;
	json_t *r = report(1);

	T_ASSERT(fake_start(&f, FAKE_TAMPER_FIRST) == 0);
	T_OK(mer_keypair_generate(&k));
	if (fake_client(&f, &k, 2000, &c) == 0) {
		T_EXPECT(mer_link_client_report(c, r, 0) != 0);
		mer_link_client_get_stats(c, &cs);
		T_EQ_INT(cs.rejected[MER_CHAN_R_AUTH_FAILED], 1);
		T_EQ_INT(cs.reports, 0);
		T_OK(mer_link_client_report(c, r, 0));
		mer_link_client_get_stats(c, &cs);
		T_EQ_INT(cs.reports, 1);
	} else {
		t_fail(__FILE__, __LINE__, "client");
	}
	json_decref(r);
	mer_link_client_close(c);
	fake_stop(&f);
}

/* Review finding 3: the ACK sealed for report X, withheld and then given
 * as the answer to report Y, must not acknowledge Y. */
static void test_agent_misrouted_ack(void)
{
	struct fake f;
	struct mer_keypair k;
	struct mer_link_client *c = NULL;
	struct mer_link_stats cs;
	json_t *x = report(1), *y = report(2);

	T_ASSERT(fake_start(&f, FAKE_MISROUTE) == 0);
	T_OK(mer_keypair_generate(&k));
	if (fake_client(&f, &k, 500, &c) == 0) {
		T_EQ_INT(mer_link_client_report(c, x, 0), MER_ETIMEDOUT);
		T_EXPECT(mer_link_client_report(c, y, 2000) != 0);
		mer_link_client_get_stats(c, &cs);
		T_EQ_INT(cs.rejected[MER_CHAN_R_AUTH_FAILED], 1);
		T_EQ_INT(cs.reports, 0);
		T_OK(mer_link_client_report(c, y, 2000));
	} else {
		t_fail(__FILE__, __LINE__, "client");
	}
	json_decref(x);
	json_decref(y);
	mer_link_client_close(c);
	fake_stop(&f);
}

/* nng's resend is off for sealed messages too: a REPORT whose connection
 * drops is reported, not sent again by nng. */
static void test_no_nng_resend_report(void)
{
	nng_socket rep;
	nng_msg *hello = NULL, *first = NULL, *w;
	struct mer_keypair k, b;
	struct mer_chan_session bs;
	struct mer_link_client *c = NULL;
	struct poller p = {0};
	pthread_t th;
	char url[128];

	T_OK(mer_keypair_generate(&k));
	T_OK(mer_keypair_generate(&b));
	T_ASSERT(bare_rep_listen(&rep, url, sizeof(url)) == 0);
	mer_key_fingerprint(b.pk, F.fp);
	T_ASSERT(fx_client(&F, &k, F.fp, &c) == 0);
	p.c = c;
	T_ASSERT(pthread_create(&th, NULL, report_thread, &p) == 0);
	T_EXPECT(nng_recvmsg(rep, &hello, 0) == 0);
	if (hello && nng_msg_alloc(&w, MER_CHAN_WELCOME_LEN) == 0) {
		if (mer_chan_welcome_make(
			&b, nng_msg_body(hello), nng_msg_len(hello), 0, 99,
			3600, 1u << 20, nng_msg_body(w), &bs) != 0 ||
		    nng_sendmsg(rep, w, 0) != 0)
			nng_msg_free(w);
	}
	T_EXPECT(nng_recvmsg(rep, &first, 0) == 0); /* the sealed REPORT */
	T_EXPECT(first && nng_msg_len(first) > MER_WIRE_HDR_LEN &&
		 ((uint8_t *)nng_msg_body(first))[3] == MER_WIRE_REPORT);
	expect_not_resent(&rep, url, th, &p, first);
	if (hello)
		nng_msg_free(hello);
	if (first)
		nng_msg_free(first);
	mer_link_client_close(c);
	nng_close(rep);
	memset(&F, 0, sizeof(F));
}

/* ---- session bookkeeping under abuse (review findings 1 and 5) ---- */

static uint8_t *raw_hello(struct raw *r, const uint8_t *hello, size_t *wl)
{
	return raw_xchg(r, hello, MER_CHAN_HELLO_LEN, wl);
}

/* Replayed HELLOs of one key push out only that key's unconfirmed
 * sessions: never a confirmed one, never another site's. */
static void test_replayed_hello_stays_local(void)
{
	struct mer_keypair k2;
	struct mer_chan_hello hs;
	struct raw a, other, atk;
	uint8_t m[4096], *w;
	size_t n, wl;
	int status = -1;
	json_t *rp = report(1);

	T_ASSERT(fx_start(NULL, 0, 0) == 0);
	T_OK(mer_keypair_generate(&k2));
	reg_add(&F.reg, k2.pk, "west-1");
	T_OK(mer_link_client_report(F.cli, rp, 0)); /* confirmed */
	T_ASSERT(raw_open(&a) == 0 && raw_open(&other) == 0 &&
		 raw_open(&atk) == 0);
	T_OK(raw_handshake(&other, &k2, &status)); /* west-1, unconfirmed */
	T_OK(mer_chan_hello_make(&hs, &F.skey, 0));
	w = raw_hello(&a, hs.msg, &wl);
	T_ASSERT(w != NULL);
	T_OK(mer_chan_hello_finish(&hs, w, wl, F.fp, &a.ch, &status, NULL));
	free(w);
	/* The attacker replays a's HELLO: 4 more unconfirmed east-1
	 * sessions; a's (the oldest) goes. */
	for (int i = 0; i < 4; i++) {
		w = raw_hello(&atk, hs.msg, &wl);
		T_EXPECT(w && wl == MER_CHAN_WELCOME_LEN);
		free(w);
	}
	mer_chan_hello_wipe(&hs);
	T_OK(raw_seal(&a, MER_WIRE_REPORT, "{\"seq\":2}", m, &n));
	T_EXPECT(xchg_notice(&a, m, n, MER_CHAN_R_UNKNOWN_SESSION));
	/* west-1's unconfirmed session and east-1's confirmed one live. */
	T_OK(raw_seal(&other, MER_WIRE_REPORT, "{\"seq\":3}", m, &n));
	T_EQ_INT(xchg_error(&other, m, n), 0);
	T_OK(mer_link_client_report(F.cli, rp, 0));
	T_EQ_INT(srv_stats().handshakes, 7);
	T_EQ_INT(reports_n(&F.reg), 3);
	json_decref(rp);
	nng_close(a.s);
	nng_close(other.s);
	nng_close(atk.s);
	fx_stop();
}

static int hk_join_used(void *arg, const char *token, const uint8_t pk[32],
			char site[128], char region[128])
{
	(void)arg;
	(void)token;
	(void)pk;
	(void)site;
	(void)region;
	return MER_EUSED;
}

static int raw_join_hello(struct raw *r, const struct mer_keypair *key)
{
	struct mer_chan_hello hs;
	uint8_t *w;
	size_t wl = 0;
	int rv = -1, status = -1;

	if (mer_chan_hello_make(&hs, key, 1) != 0)
		return -1;
	w = raw_xchg(r, hs.msg, sizeof(hs.msg), &wl);
	if (w &&
	    mer_chan_hello_finish(&hs, w, wl, F.fp, &r->ch, &status, NULL) ==
		0 &&
	    status == 0)
		rv = 0;
	free(w);
	mer_chan_hello_wipe(&hs);
	return rv;
}

/* A join session carries one message, whatever it is, and join sessions
 * have their own small cap. */
static void test_join_sessions_single_use_capped(void)
{
	struct mer_keypair k;
	struct raw r, flood;
	uint8_t m[4096];
	size_t n;
	uint64_t base;

	T_ASSERT(fx_start(NULL, 0, 0) == 0);
	mer_link_server_stop(F.srv);
	F.ops.join = hk_join_used;
	T_ASSERT(fx_server(&F) == 0);
	base = srv_stats().sessions;
	T_OK(mer_keypair_generate(&k));
	T_ASSERT(raw_open(&r) == 0 && raw_open(&flood) == 0);
	T_ASSERT(raw_join_hello(&r, &k) == 0);
	T_EQ_INT(srv_stats().sessions, base + 1);
	T_OK(raw_seal(&r, MER_WIRE_REPORT, "{}", m, &n));
	T_EQ_INT(xchg_error(&r, m, n), MER_EPROTO);
	T_EQ_INT(srv_stats().sessions, base); /* gone after one message */
	T_OK(raw_seal(&r, MER_WIRE_JOIN, "{\"token\":\"x\"}", m, &n));
	T_EXPECT(xchg_notice(&r, m, n, MER_CHAN_R_UNKNOWN_SESSION));
	/* A flood of join handshakes holds at most 64 sessions. */
	for (int i = 0; i < 200; i++)
		T_ASSERT(raw_join_hello(&flood, &k) == 0);
	T_EXPECT(srv_stats().sessions <= base + 64);
	nng_close(r.s);
	nng_close(flood.s);
	fx_stop();
}

/* Finding 1: sessions evicted while their first message is being opened.
 * Run under VARIANT=san to catch a use after free; the bookkeeping is
 * checked afterwards (an underflowed unconfirmed count would make every
 * new handshake evict the previous one). */
struct churn {
	const struct mer_keypair *key;
	int confirm; /* send a report after each handshake */
	int stop;
};

static void *churn_thread(void *arg)
{
	struct churn *ch = arg;
	struct raw r;
	uint8_t m[4096], *rep;
	size_t n, rl;
	int status;

	if (raw_open(&r) != 0)
		return NULL;
	while (!__atomic_load_n(&ch->stop, __ATOMIC_SEQ_CST)) {
		if (raw_handshake(&r, ch->key, &status) != 0 || !ch->confirm)
			continue;
		if (raw_seal(&r, MER_WIRE_REPORT, "{}", m, &n) != 0)
			continue;
		rep = raw_xchg(&r, m, n, &rl);
		free(rep);
	}
	nng_close(r.s);
	return NULL;
}

static void test_evict_race(void)
{
	struct churn honest = {.confirm = 1}, flood = {.confirm = 0};
	struct mer_keypair k2, k3;
	pthread_t th[6];
	struct raw a, b;
	uint8_t m[4096];
	size_t n;
	int status;
	char **names = NULL;
	size_t nn = 0;

	T_ASSERT(fx_start(NULL, 0, 0) == 0);
	honest.key = flood.key = &F.skey;
	for (int i = 0; i < 6; i++)
		T_ASSERT(pthread_create(&th[i], NULL, churn_thread,
					i < 3 ? &honest : &flood) == 0);
	for (int i = 0; i < 20; i++) {
		T_OK(mer_link_server_sites(F.srv, &names, &nn));
		mer_link_names_free(names, nn);
		t_sleep_ms(50);
	}
	__atomic_store_n(&honest.stop, 1, __ATOMIC_SEQ_CST);
	__atomic_store_n(&flood.stop, 1, __ATOMIC_SEQ_CST);
	for (int i = 0; i < 6; i++)
		pthread_join(th[i], NULL);
	T_OK(mer_link_server_sites(F.srv, &names, &nn));
	mer_link_names_free(names, nn);
	/* Bookkeeping intact: an unconfirmed session of one site survives
	 * a handshake of another. */
	T_OK(mer_keypair_generate(&k2));
	T_OK(mer_keypair_generate(&k3));
	reg_add(&F.reg, k2.pk, "s2");
	reg_add(&F.reg, k3.pk, "s3");
	T_ASSERT(raw_open(&a) == 0 && raw_open(&b) == 0);
	T_OK(raw_handshake(&a, &k2, &status));
	T_OK(raw_handshake(&b, &k3, &status));
	T_OK(raw_seal(&a, MER_WIRE_REPORT, "{}", m, &n));
	T_EQ_INT(xchg_error(&a, m, n), 0);
	nng_close(a.s);
	nng_close(b.s);
	fx_stop();
}

/* Finding 12: close while calls are in flight in other threads. */
static void test_close_with_calls_in_flight(void)
{
	struct poller p = {0};
	pthread_t th;

	T_ASSERT(fx_start(NULL, 0, 0) == 0);
	p.c = F.cli;
	p.wait_ms = 20000;
	T_ASSERT(pthread_create(&th, NULL, poll_thread, &p) == 0);
	t_sleep_ms(300);
	mer_link_client_close(F.cli); /* waits for the poll to leave */
	F.cli = NULL;
	pthread_join(th, NULL);
	T_EXPECT(p.rv != 0); /* cut short (closed), not a crash or a hang */
	T_EXPECT(p.ms < 5000);
	fx_stop();
}

/* Finding 11: a huge wait does not overflow into a negative timeout. */
static void test_poll_huge_wait(void)
{
	json_t *cmd = json_pack("{s:s}", "id", "c-9"), *cmds = NULL;

	T_ASSERT(fx_start(NULL, 0, 0) == 0);
	T_OK(mer_link_server_queue_command(F.srv, "east-1", cmd));
	json_decref(cmd);
	T_OK(mer_link_client_poll(F.cli, 2147483647, &cmds));
	T_EQ_INT(json_array_size(cmds), 1);
	json_decref(cmds);
	fx_stop();
}

static const struct t_case cases[] = {
    {"tcp_roundtrip", test_tcp_roundtrip},
    {"ipc_roundtrip", test_ipc_roundtrip},
    {"longpoll_prompt", test_longpoll_prompt},
    {"report_while_polling", test_report_while_polling},
    {"rekey_no_loss", test_rekey_no_loss},
    {"broker_restart", test_broker_restart},
    {"no_nng_resend", test_no_nng_resend},
    {"attack_replay", test_attack_replay},
    {"attack_flip_header", test_attack_flip_header},
    {"attack_flip_ciphertext", test_attack_flip_ciphertext},
    {"attack_truncated", test_attack_truncated},
    {"attack_oversized", test_attack_oversized},
    {"attack_garbage", test_attack_garbage},
    {"attack_unjoined_key", test_attack_unjoined_key},
    {"attack_revoked_key", test_attack_revoked_key},
    {"attack_wrong_broker_key", test_attack_wrong_broker_key},
    {"attack_bad_type_and_payload", test_attack_bad_type_and_payload},
    {"agent_forged_notice_keeps_report", test_agent_forged_notice_keeps_report},
    {"agent_forged_revoked_notice", test_agent_forged_revoked_notice},
    {"agent_tampered_ack", test_agent_tampered_ack},
    {"agent_misrouted_ack", test_agent_misrouted_ack},
    {"no_nng_resend_report", test_no_nng_resend_report},
    {"replayed_hello_stays_local", test_replayed_hello_stays_local},
    {"join_sessions_single_use_capped", test_join_sessions_single_use_capped},
    {"evict_race", test_evict_race},
    {"close_with_calls_in_flight", test_close_with_calls_in_flight},
    {"poll_huge_wait", test_poll_huge_wait},
};

T_MAIN("link", cases)
