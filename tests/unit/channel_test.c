/*
 * Tests for common/channel without sockets: handshake both ways, seal/open,
 * counters and the replay window, and every way a message can be bad.
 */
#include "common/channel.h"
#include "common/err.h"
#include "tests/harness.h"

#include <sodium.h>

struct pair {
	struct mer_keypair broker, site;
	char broker_fp[MER_KEY_FP_SIZE];
	struct mer_chan_session a, b; /* agent, broker */
};

static int make_pair(struct pair *p, uint32_t rekey_s, uint32_t rekey_msgs)
{
	struct mer_chan_hello hs;
	struct mer_chan_hello_info info;
	uint8_t welcome[MER_CHAN_WELCOME_LEN];
	int status = -1;

	if (mer_keypair_generate(&p->broker) || mer_keypair_generate(&p->site))
		return -1;
	mer_key_fingerprint(p->broker.pk, p->broker_fp);
	if (mer_chan_hello_make(&hs, &p->site, 0) ||
	    mer_chan_hello_parse(hs.msg, sizeof(hs.msg), &info) || info.join ||
	    memcmp(info.agent_pk, p->site.pk, 32) != 0 ||
	    mer_chan_welcome_make(&p->broker, hs.msg, sizeof(hs.msg), 0, 77,
				  rekey_s, rekey_msgs, welcome, &p->b) ||
	    mer_chan_hello_finish(&hs, welcome, sizeof(welcome), p->broker_fp,
				  &p->a, &status, NULL) ||
	    status != 0)
		return -1;
	mer_chan_hello_wipe(&hs);
	return 0;
}

static int seal(struct mer_chan_session *s, int type, const char *text,
		uint8_t *out, size_t *n)
{
	return mer_chan_seal(s, type, (const uint8_t *)text, strlen(text), out,
			     512, n);
}

static void test_handshake_and_roundtrip(void)
{
	struct pair p;
	uint8_t m[512], pt[512];
	size_t n, ptn;
	int type, reason;

	T_ASSERT(make_pair(&p, 60, 1000) == 0);
	T_EXPECT(p.a.id == 77 && p.b.id == 77);
	T_EXPECT(memcmp(p.a.tx_key, p.b.rx_key, 32) == 0);
	T_EXPECT(memcmp(p.a.rx_key, p.b.tx_key, 32) == 0);
	T_EXPECT(memcmp(p.a.tx_key, p.a.rx_key, 32) != 0);
	T_EXPECT(memcmp(p.a.peer_pk, p.broker.pk, 32) == 0);
	T_EXPECT(memcmp(p.b.peer_pk, p.site.pk, 32) == 0);
	T_EQ_INT(p.a.rekey_after_s, 60);
	T_EQ_INT(p.a.rekey_after_msgs, 1000);

	T_OK(seal(&p.a, MER_WIRE_REPORT, "{\"x\":1}", m, &n));
	T_EQ_INT(n, 7 + MER_WIRE_OVERHEAD);
	T_EXPECT(memmem(m, n, "\"x\"", 3) == NULL); /* encrypted */
	T_OK(mer_chan_open(&p.b, m, n, &type, pt, sizeof(pt), &ptn, &reason));
	T_EQ_INT(type, MER_WIRE_REPORT);
	T_EQ_INT(ptn, 7);
	T_EXPECT(memcmp(pt, "{\"x\":1}", 7) == 0);
	uint8_t req[MER_WIRE_HDR_LEN];
	memcpy(req, m, sizeof(req));
	T_OK(mer_chan_seal_reply(&p.b, MER_WIRE_ACK, req, (const uint8_t *)"{}",
				 2, m, sizeof(m), &n));
	T_OK(mer_chan_open_reply(&p.a, m, n, req, &type, pt, sizeof(pt), &ptn,
				 &reason));
	T_EQ_INT(type, MER_WIRE_ACK);
	/* A message cannot be reflected back to its sender. */
	T_OK(seal(&p.a, MER_WIRE_REPORT, "{}", m, &n));
	T_EXPECT(mer_chan_open_reply(&p.a, m, n, m, &type, pt, sizeof(pt), &ptn,
				     &reason) != 0);
	/* Each side uses its own functions. */
	T_EQ_INT(
	    mer_chan_open(&p.a, m, n, &type, pt, sizeof(pt), &ptn, &reason),
	    MER_EINVAL);
	T_EQ_INT(seal(&p.b, MER_WIRE_ACK, "{}", m, &n), MER_EINVAL);
	T_EQ_INT(mer_chan_seal_reply(&p.a, MER_WIRE_ACK, req,
				     (const uint8_t *)"{}", 2, m, sizeof(m),
				     &n),
		 MER_EINVAL);
	T_EQ_INT(mer_chan_seal_reply(&p.b, MER_WIRE_REPORT, req,
				     (const uint8_t *)"{}", 2, m, sizeof(m),
				     &n),
		 MER_EINVAL);
}

/* Review finding 3: a reply opens only as the answer to the request it was
 * sealed for, so an on-path attacker cannot make the ACK for one request
 * count for another (swapped, delayed or re-routed replies). */
static void test_reply_bound_to_request(void)
{
	struct pair p;
	uint8_t x[512], y[512], ax[512], pt[512];
	size_t nx, ny, nax, ptn;
	int type, reason;
	struct mer_chan_session before;

	T_ASSERT(make_pair(&p, 60, 1000) == 0);
	T_OK(seal(&p.a, MER_WIRE_REPORT, "{\"id\":\"x\"}", x, &nx));
	T_OK(seal(&p.a, MER_WIRE_REPORT, "{\"id\":\"y\"}", y, &ny));
	T_OK(mer_chan_open(&p.b, x, nx, &type, pt, sizeof(pt), &ptn, &reason));
	T_OK(mer_chan_seal_reply(&p.b, MER_WIRE_ACK, x, (const uint8_t *)"{}",
				 2, ax, sizeof(ax), &nax));
	/* X's ACK offered as the answer to Y: refused, window untouched. */
	before = p.a;
	T_EQ_INT(mer_chan_open_reply(&p.a, ax, nax, y, &type, pt, sizeof(pt),
				     &ptn, &reason),
		 MER_ECRYPTO);
	T_EQ_INT(reason, MER_CHAN_R_AUTH_FAILED);
	T_EXPECT(memcmp(&before, &p.a, sizeof(before)) == 0);
	/* A request header differing in any byte does not match either. */
	for (size_t i = 0; i < MER_WIRE_HDR_LEN; i++) {
		uint8_t bad[MER_WIRE_HDR_LEN];
		memcpy(bad, x, sizeof(bad));
		bad[i] ^= 0x01;
		if (mer_chan_open_reply(&p.a, ax, nax, bad, &type, pt,
					sizeof(pt), &ptn, &reason) == 0)
			t_fail(__FILE__, __LINE__, "byte %zu accepted", i);
	}
	/* The right pairing opens. */
	T_OK(mer_chan_open_reply(&p.a, ax, nax, x, &type, pt, sizeof(pt), &ptn,
				 &reason));
	T_EQ_INT(type, MER_WIRE_ACK);
}

static void test_counters_and_window(void)
{
	struct pair p;
	uint8_t m[70][512], pt[512];
	size_t n[70], ptn;
	int type, reason;

	T_ASSERT(make_pair(&p, 60, 1000) == 0);
	for (int i = 0; i < 70; i++)
		T_OK(seal(&p.a, MER_WIRE_POLL, "{}", m[i], &n[i]));
	T_EXPECT(p.a.tx_counter == 70);
	T_EXPECT(mer_wire_get_u64(m[0] + 12) == 1); /* first counter is 1 */
	/* Out of order within the window is fine (two exchanges in flight). */
	T_OK(mer_chan_open(&p.b, m[10], n[10], &type, pt, sizeof(pt), &ptn,
			   &reason));
	T_OK(mer_chan_open(&p.b, m[9], n[9], &type, pt, sizeof(pt), &ptn,
			   &reason));
	/* Replay. */
	T_EQ_INT(mer_chan_open(&p.b, m[10], n[10], &type, pt, sizeof(pt), &ptn,
			       &reason),
		 MER_EREPLAY);
	T_EQ_INT(reason, MER_CHAN_R_REPLAY);
	/* Jump ahead: counter 70; then 3 is out of the 64-wide window. */
	T_OK(mer_chan_open(&p.b, m[69], n[69], &type, pt, sizeof(pt), &ptn,
			   &reason));
	T_EQ_INT(mer_chan_open(&p.b, m[2], n[2], &type, pt, sizeof(pt), &ptn,
			       &reason),
		 MER_EREPLAY);
	T_EQ_INT(reason, MER_CHAN_R_OUT_OF_WINDOW);
	/* 7 (= 70 - 63) is the oldest still acceptable. */
	T_OK(mer_chan_open(&p.b, m[6], n[6], &type, pt, sizeof(pt), &ptn,
			   &reason));
	T_EQ_INT(mer_chan_open(&p.b, m[5], n[5], &type, pt, sizeof(pt), &ptn,
			       &reason),
		 MER_EREPLAY);
	T_EQ_INT(reason, MER_CHAN_R_OUT_OF_WINDOW);
	T_EXPECT(p.b.rx_max == 70);
}

static void test_tamper_every_byte(void)
{
	struct pair p;
	uint8_t m[512], bad[512], pt[512];
	size_t n, ptn;
	int type, reason, fails = 0;
	struct mer_chan_session before;

	T_ASSERT(make_pair(&p, 60, 1000) == 0);
	T_OK(seal(&p.a, MER_WIRE_REPORT, "{\"gpus\":8}", m, &n));
	before = p.b;
	for (size_t i = 0; i < n; i++) {
		memcpy(bad, m, n);
		bad[i] ^= 0x01;
		int rv = mer_chan_open(&p.b, bad, n, &type, pt, sizeof(pt),
				       &ptn, &reason);
		if (rv == 0) {
			t_fail(__FILE__, __LINE__, "flip at byte %zu accepted",
			       i);
			fails++;
		}
		/* header bytes 4..19 (session, counter) and the body fail
		 * authentication or lookup; never accepted */
		if (i >= 20 && reason != MER_CHAN_R_AUTH_FAILED)
			t_fail(__FILE__, __LINE__, "byte %zu: reason %s", i,
			       mer_chan_reason_name(reason));
	}
	T_EQ_INT(fails, 0);
	/* Failed opens changed nothing. */
	T_EXPECT(memcmp(&before, &p.b, sizeof(before)) == 0);
	/* And the untouched message still opens. */
	T_OK(mer_chan_open(&p.b, m, n, &type, pt, sizeof(pt), &ptn, &reason));
}

static void test_truncated_and_garbage(void)
{
	struct pair p;
	uint8_t m[512], pt[512], junk[64];
	size_t n, ptn;
	int type, reason;

	T_ASSERT(make_pair(&p, 60, 1000) == 0);
	T_OK(seal(&p.a, MER_WIRE_REPORT, "{\"a\":\"bcdefgh\"}", m, &n));
	T_EQ_INT(mer_chan_open(&p.b, m, MER_WIRE_HDR_LEN + 10, &type, pt,
			       sizeof(pt), &ptn, &reason),
		 MER_EPARSE);
	T_EQ_INT(reason, MER_CHAN_R_TRUNCATED);
	T_EQ_INT(
	    mer_chan_open(&p.b, m, n - 1, &type, pt, sizeof(pt), &ptn, &reason),
	    MER_ECRYPTO);
	T_EQ_INT(reason, MER_CHAN_R_AUTH_FAILED);
	T_EQ_INT(
	    mer_chan_open(&p.b, m, 10, &type, pt, sizeof(pt), &ptn, &reason),
	    MER_EPARSE);
	T_EQ_INT(reason, MER_CHAN_R_MALFORMED);
	randombytes_buf(junk, sizeof(junk));
	junk[0] = 'x';
	T_EQ_INT(mer_chan_open(&p.b, junk, sizeof(junk), &type, pt, sizeof(pt),
			       &ptn, &reason),
		 MER_EPARSE);
	T_EQ_INT(reason, MER_CHAN_R_MALFORMED);
	/* Wrong session id: */
	T_OK(seal(&p.a, MER_WIRE_REPORT, "{}", m, &n));
	p.b.id++;
	T_EQ_INT(
	    mer_chan_open(&p.b, m, n, &type, pt, sizeof(pt), &ptn, &reason),
	    MER_ENOTFOUND);
	T_EQ_INT(reason, MER_CHAN_R_UNKNOWN_SESSION);
	/* Buffers too small are refused, not overrun. */
	T_EQ_INT(mer_chan_seal(&p.a, MER_WIRE_REPORT, (const uint8_t *)"{}", 2,
			       m, 20, &n),
		 MER_ETOOBIG);
	T_EQ_INT(mer_chan_seal(&p.a, MER_WIRE_HELLO, (const uint8_t *)"{}", 2,
			       m, sizeof(m), &n),
		 MER_EINVAL);
}

static void test_wrong_pin_and_forgery(void)
{
	struct mer_keypair broker, site, evil;
	struct mer_chan_hello hs;
	struct mer_chan_session a, b;
	uint8_t w[MER_CHAN_WELCOME_LEN];
	char fp[MER_KEY_FP_SIZE];
	int status, reason;

	T_OK(mer_keypair_generate(&broker));
	T_OK(mer_keypair_generate(&site));
	T_OK(mer_keypair_generate(&evil));
	mer_key_fingerprint(broker.pk, fp);
	T_OK(mer_chan_hello_make(&hs, &site, 0));
	/* A broker with another key: the pin catches it. */
	T_OK(mer_chan_welcome_make(&evil, hs.msg, sizeof(hs.msg), 0, 5, 60, 10,
				   w, &b));
	T_EQ_INT(
	    mer_chan_hello_finish(&hs, w, sizeof(w), fp, &a, &status, &reason),
	    MER_EAUTH);
	T_EQ_INT(reason, MER_CHAN_R_BROKER_KEY);
	/* An attacker who swaps the key field but not the DH: confirm fails.
	 */
	memcpy(w + MER_WIRE_HDR_LEN + 34, broker.pk, 32);
	T_EQ_INT(
	    mer_chan_hello_finish(&hs, w, sizeof(w), fp, &a, &status, &reason),
	    MER_ECRYPTO);
	T_EQ_INT(reason, MER_CHAN_R_AUTH_FAILED);
	/* A refusal is authenticated: flipping its status is detected. */
	T_OK(mer_chan_welcome_make(&broker, hs.msg, sizeof(hs.msg),
				   MER_EREVOKED, 0, 60, 10, w, &b));
	T_OK(
	    mer_chan_hello_finish(&hs, w, sizeof(w), fp, &a, &status, &reason));
	T_EQ_INT(status, MER_EREVOKED);
	w[MER_WIRE_HDR_LEN + 1] = 0;
	w[MER_WIRE_HDR_LEN] = 0; /* "status 0" */
	T_EQ_INT(
	    mer_chan_hello_finish(&hs, w, sizeof(w), fp, &a, &status, &reason),
	    MER_ECRYPTO);
	/* A WELCOME made for another HELLO does not verify. */
	{
		struct mer_chan_hello hs2;
		T_OK(mer_chan_hello_make(&hs2, &site, 0));
		T_OK(mer_chan_welcome_make(&broker, hs2.msg, sizeof(hs2.msg), 0,
					   9, 60, 10, w, &b));
		T_EQ_INT(mer_chan_hello_finish(&hs, w, sizeof(w), fp, &a,
					       &status, &reason),
			 MER_ECRYPTO);
		mer_chan_hello_wipe(&hs2);
	}
	mer_chan_hello_wipe(&hs);
	T_EQ_INT(hs.site.sk[0] | hs.eph.sk[0], 0);
}

static void test_hello_shapes(void)
{
	struct mer_keypair site, broker;
	struct mer_chan_hello hs;
	struct mer_chan_hello_info info;
	struct mer_chan_session b;
	uint8_t bad[MER_CHAN_HELLO_LEN], w[MER_CHAN_WELCOME_LEN];

	T_OK(mer_keypair_generate(&site));
	T_OK(mer_keypair_generate(&broker));
	T_OK(mer_chan_hello_make(&hs, &site, 1));
	T_OK(mer_chan_hello_parse(hs.msg, sizeof(hs.msg), &info));
	T_EQ_INT(info.join, 1);
	T_EQ_INT(mer_chan_hello_parse(hs.msg, sizeof(hs.msg) - 1, &info),
		 MER_EPARSE);
	memcpy(bad, hs.msg, sizeof(bad));
	bad[MER_WIRE_HDR_LEN] = 0x80; /* unknown flag */
	T_EQ_INT(mer_chan_hello_parse(bad, sizeof(bad), &info), MER_EPARSE);
	/* Low-order (all-zero) ephemeral key: refused. */
	memcpy(bad, hs.msg, sizeof(bad));
	memset(bad + MER_WIRE_HDR_LEN + 1, 0, 32);
	T_EQ_INT(mer_chan_welcome_make(&broker, bad, sizeof(bad), 0, 3, 60, 10,
				       w, &b),
		 MER_ECRYPTO);
	/* Status 0 needs a session id. */
	T_EQ_INT(mer_chan_welcome_make(&broker, hs.msg, sizeof(hs.msg), 0, 0,
				       60, 10, w, &b),
		 MER_EINVAL);
	mer_chan_hello_wipe(&hs);
}

static void test_notice_and_names(void)
{
	uint8_t m[MER_CHAN_NOTICE_LEN];
	uint16_t code;
	uint8_t reason;

	mer_chan_notice_make(MER_ENOTFOUND, MER_CHAN_R_UNKNOWN_SESSION, m);
	T_OK(mer_chan_notice_parse(m, sizeof(m), &code, &reason));
	T_EQ_INT(code, MER_ENOTFOUND);
	T_EQ_INT(reason, MER_CHAN_R_UNKNOWN_SESSION);
	T_EQ_INT(mer_chan_notice_parse(m, sizeof(m) - 1, &code, &reason),
		 MER_EPARSE);
	for (int r = 0; r < MER_CHAN_R_COUNT; r++)
		T_EXPECT(strcmp(mer_chan_reason_name(r), "unknown") != 0);
	T_EQ_STR(mer_chan_reason_name(MER_CHAN_R_COUNT), "unknown");
	T_EQ_STR(mer_chan_reason_name(MER_CHAN_R_REPLAY), "replay");
}

static void test_wipe(void)
{
	struct pair p;
	static const uint8_t zero[32];

	T_ASSERT(make_pair(&p, 60, 1000) == 0);
	mer_chan_session_wipe(&p.a);
	T_EXPECT(memcmp(p.a.tx_key, zero, 32) == 0);
	T_EXPECT(memcmp(p.a.rx_key, zero, 32) == 0);
}

static const struct t_case cases[] = {
    {"reply_bound_to_request", test_reply_bound_to_request},
    {"handshake_and_roundtrip", test_handshake_and_roundtrip},
    {"counters_and_window", test_counters_and_window},
    {"tamper_every_byte", test_tamper_every_byte},
    {"truncated_and_garbage", test_truncated_and_garbage},
    {"wrong_pin_and_forgery", test_wrong_pin_and_forgery},
    {"hello_shapes", test_hello_shapes},
    {"notice_and_names", test_notice_and_names},
    {"wipe", test_wipe},
};

T_MAIN("channel", cases)
