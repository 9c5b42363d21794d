/*
 * Handshake, key schedule, seal/open and replay window of the federation
 * link (docs/PROTOCOL.md §4–§5). Pure: no I/O, no clock, no allocation; the
 * transport and session bookkeeping live in link.c.
 */
#include "channel.h"

#include <sodium.h>
#include <string.h>

#include "err.h"

#define DIR_A2B 0x01
#define DIR_B2A 0x02
#define TH_LABEL "meridian-link-v1"
#define KDF_CTX "MerLink1"
#define WELCOME_CONFIRM_OFF 78

const char *mer_chan_reason_name(int reason)
{
	switch ((enum mer_chan_reason)reason) {
	case MER_CHAN_R_MALFORMED:
		return "malformed";
	case MER_CHAN_R_VERSION:
		return "version";
	case MER_CHAN_R_OVERSIZE:
		return "oversize";
	case MER_CHAN_R_TRUNCATED:
		return "truncated";
	case MER_CHAN_R_UNKNOWN_SESSION:
		return "unknown_session";
	case MER_CHAN_R_REPLAY:
		return "replay";
	case MER_CHAN_R_OUT_OF_WINDOW:
		return "out_of_window";
	case MER_CHAN_R_AUTH_FAILED:
		return "auth_failed";
	case MER_CHAN_R_EXPIRED:
		return "expired";
	case MER_CHAN_R_REVOKED:
		return "revoked";
	case MER_CHAN_R_UNREGISTERED:
		return "unregistered";
	case MER_CHAN_R_BAD_TYPE:
		return "bad_type";
	case MER_CHAN_R_BAD_PAYLOAD:
		return "bad_payload";
	case MER_CHAN_R_BROKER_KEY:
		return "broker_key";
	case MER_CHAN_R_HANDSHAKE:
		return "handshake";
	case MER_CHAN_R_COUNT:
		break;
	}
	return "unknown";
}

static void set_reason(int *reason, int r)
{
	if (reason)
		*reason = r;
}

void mer_chan_session_wipe(struct mer_chan_session *s)
{
	if (s)
		sodium_memzero(s, sizeof(*s));
}

void mer_chan_hello_wipe(struct mer_chan_hello *hs)
{
	if (hs)
		sodium_memzero(hs, sizeof(*hs));
}

/* Key schedule shared by both sides. welcome is the full WELCOME message
 * (its confirm field is not read). Fills the two directional keys and the
 * confirmation tag. */
static int derive(const uint8_t dh[3][32], const uint8_t *hello,
		  const uint8_t *welcome, uint8_t k_a2b[32], uint8_t k_b2a[32],
		  uint8_t confirm[32])
{
	crypto_generichash_state st;
	uint8_t th[32], prk[32], k_conf[32];
	int rv = MER_ECRYPTO;

	if (crypto_generichash_init(&st, NULL, 0, sizeof(th)) != 0 ||
	    crypto_generichash_update(&st, (const uint8_t *)TH_LABEL,
				      strlen(TH_LABEL)) != 0 ||
	    crypto_generichash_update(&st, hello, MER_CHAN_HELLO_LEN) != 0 ||
	    crypto_generichash_update(
		&st, welcome, MER_WIRE_HDR_LEN + WELCOME_CONFIRM_OFF) != 0 ||
	    crypto_generichash_final(&st, th, sizeof(th)) != 0)
		goto out;
	if (crypto_generichash_init(&st, th, sizeof(th), sizeof(prk)) != 0 ||
	    crypto_generichash_update(&st, dh[0], 32) != 0 ||
	    crypto_generichash_update(&st, dh[1], 32) != 0 ||
	    crypto_generichash_update(&st, dh[2], 32) != 0 ||
	    crypto_generichash_final(&st, prk, sizeof(prk)) != 0)
		goto out;
	if (crypto_kdf_derive_from_key(k_a2b, 32, 1, KDF_CTX, prk) != 0 ||
	    crypto_kdf_derive_from_key(k_b2a, 32, 2, KDF_CTX, prk) != 0 ||
	    crypto_kdf_derive_from_key(k_conf, 32, 3, KDF_CTX, prk) != 0)
		goto out;
	if (crypto_generichash(confirm, 32, th, sizeof(th), k_conf,
			       sizeof(k_conf)) != 0)
		goto out;
	rv = 0;
out:
	sodium_memzero(&st, sizeof(st));
	sodium_memzero(prk, sizeof(prk));
	sodium_memzero(k_conf, sizeof(k_conf));
	sodium_memzero(th, sizeof(th));
	return rv;
}

int mer_chan_hello_make(struct mer_chan_hello *hs,
			const struct mer_keypair *site, int join)
{
	struct mer_wire_hdr h = {.type = MER_WIRE_HELLO};
	int rv;

	memset(hs, 0, sizeof(*hs));
	rv = mer_keypair_generate(&hs->eph);
	if (rv != 0)
		return rv;
	hs->site = *site;
	mer_wire_hdr_encode(&h, hs->msg);
	hs->msg[MER_WIRE_HDR_LEN] = join ? MER_CHAN_HELLO_JOIN : 0;
	memcpy(hs->msg + MER_WIRE_HDR_LEN + 1, hs->eph.pk, 32);
	memcpy(hs->msg + MER_WIRE_HDR_LEN + 33, site->pk, 32);
	return 0;
}

int mer_chan_hello_parse(const uint8_t *msg, size_t len,
			 struct mer_chan_hello_info *info)
{
	struct mer_wire_hdr h;
	uint8_t flags;

	if (len != MER_CHAN_HELLO_LEN || mer_wire_hdr_decode(msg, len, &h) ||
	    h.type != MER_WIRE_HELLO || h.session != 0 || h.counter != 0)
		return MER_EPARSE;
	flags = msg[MER_WIRE_HDR_LEN];
	if (flags & ~MER_CHAN_HELLO_JOIN)
		return MER_EPARSE;
	info->join = (flags & MER_CHAN_HELLO_JOIN) != 0;
	memcpy(info->agent_pk, msg + MER_WIRE_HDR_LEN + 33, 32);
	return 0;
}

int mer_chan_welcome_make(const struct mer_keypair *broker,
			  const uint8_t *hello, size_t hello_len,
			  uint16_t status, uint64_t session_id,
			  uint32_t rekey_after_s, uint32_t rekey_after_msgs,
			  uint8_t out[MER_CHAN_WELCOME_LEN],
			  struct mer_chan_session *s)
{
	struct mer_chan_hello_info info;
	struct mer_keypair eph;
	struct mer_wire_hdr h = {.type = MER_WIRE_WELCOME};
	uint8_t dh[3][32], k_a2b[32], k_b2a[32], confirm[32];
	const uint8_t *ea = hello + MER_WIRE_HDR_LEN + 1;
	uint8_t *b = out + MER_WIRE_HDR_LEN;
	int rv;

	memset(s, 0, sizeof(*s));
	if (mer_chan_hello_parse(hello, hello_len, &info) != 0)
		return MER_EPARSE;
	if (status == 0 && session_id == 0)
		return MER_EINVAL;
	rv = mer_keypair_generate(&eph);
	if (rv != 0)
		return rv;
	rv = MER_ECRYPTO;
	/* crypto_scalarmult fails on an all-zero result (low-order point). */
	if (crypto_scalarmult(dh[0], eph.sk, ea) != 0 ||
	    crypto_scalarmult(dh[1], eph.sk, info.agent_pk) != 0 ||
	    crypto_scalarmult(dh[2], broker->sk, ea) != 0)
		goto out;
	h.session = status == 0 ? session_id : 0;
	mer_wire_hdr_encode(&h, out);
	memset(b, 0, MER_CHAN_WELCOME_BODY);
	mer_wire_put_u16(b, status);
	memcpy(b + 2, eph.pk, 32);
	memcpy(b + 34, broker->pk, 32);
	mer_wire_put_u32(b + 66, rekey_after_s);
	mer_wire_put_u32(b + 70, rekey_after_msgs);
	if (derive((const uint8_t(*)[32])dh, hello, out, k_a2b, k_b2a,
		   confirm) != 0)
		goto out;
	memcpy(b + WELCOME_CONFIRM_OFF, confirm, 32);
	if (status == 0) {
		s->id = session_id;
		s->side = MER_CHAN_BROKER;
		memcpy(s->tx_key, k_b2a, 32);
		memcpy(s->rx_key, k_a2b, 32);
		memcpy(s->peer_pk, info.agent_pk, 32);
		s->rekey_after_s = rekey_after_s;
		s->rekey_after_msgs = rekey_after_msgs;
	}
	rv = 0;
out:
	sodium_memzero(&eph, sizeof(eph));
	sodium_memzero(dh, sizeof(dh));
	sodium_memzero(k_a2b, sizeof(k_a2b));
	sodium_memzero(k_b2a, sizeof(k_b2a));
	return rv;
}

int mer_chan_hello_finish(struct mer_chan_hello *hs, const uint8_t *msg,
			  size_t len, const char *pinned_fp,
			  struct mer_chan_session *s, int *status, int *reason)
{
	struct mer_wire_hdr h;
	uint8_t dh[3][32], k_a2b[32], k_b2a[32], confirm[32];
	const uint8_t *b = msg + MER_WIRE_HDR_LEN;
	int rv;

	memset(s, 0, sizeof(*s));
	*status = 0;
	if (len != MER_CHAN_WELCOME_LEN || mer_wire_hdr_decode(msg, len, &h) ||
	    h.type != MER_WIRE_WELCOME || h.counter != 0) {
		set_reason(reason, MER_CHAN_R_MALFORMED);
		return MER_EPARSE;
	}
	rv = mer_key_fingerprint_check(b + 34, pinned_fp);
	if (rv != 0) {
		set_reason(reason, MER_CHAN_R_BROKER_KEY);
		return rv == MER_EPARSE ? MER_EINVAL : MER_EAUTH;
	}
	rv = MER_ECRYPTO;
	set_reason(reason, MER_CHAN_R_HANDSHAKE);
	if (crypto_scalarmult(dh[0], hs->eph.sk, b + 2) != 0 ||
	    crypto_scalarmult(dh[1], hs->site.sk, b + 2) != 0 ||
	    crypto_scalarmult(dh[2], hs->eph.sk, b + 34) != 0)
		goto out;
	if (derive((const uint8_t(*)[32])dh, hs->msg, msg, k_a2b, k_b2a,
		   confirm) != 0)
		goto out;
	if (sodium_memcmp(confirm, b + WELCOME_CONFIRM_OFF, 32) != 0) {
		set_reason(reason, MER_CHAN_R_AUTH_FAILED);
		goto out;
	}
	*status = mer_wire_get_u16(b);
	if (*status == 0) {
		if (h.session == 0) {
			set_reason(reason, MER_CHAN_R_MALFORMED);
			rv = MER_EPARSE;
			goto out;
		}
		s->id = h.session;
		s->side = MER_CHAN_AGENT;
		memcpy(s->tx_key, k_a2b, 32);
		memcpy(s->rx_key, k_b2a, 32);
		memcpy(s->peer_pk, b + 34, 32);
		s->rekey_after_s = mer_wire_get_u32(b + 66);
		s->rekey_after_msgs = mer_wire_get_u32(b + 70);
	}
	rv = 0;
out:
	sodium_memzero(dh, sizeof(dh));
	sodium_memzero(k_a2b, sizeof(k_a2b));
	sodium_memzero(k_b2a, sizeof(k_b2a));
	return rv;
}

static void make_nonce(uint8_t nonce[24], uint64_t session, int dir,
		       uint64_t counter)
{
	memset(nonce, 0, 24);
	mer_wire_put_u64(nonce, session);
	nonce[8] = (uint8_t)dir;
	mer_wire_put_u64(nonce + 16, counter);
}

static int is_request(int type)
{
	return type == MER_WIRE_REPORT || type == MER_WIRE_POLL ||
	       type == MER_WIRE_JOIN;
}

static int is_reply(int type)
{
	return type == MER_WIRE_ACK || type == MER_WIRE_COMMANDS ||
	       type == MER_WIRE_ERROR;
}

/* The AEAD's associated data: the header, and for a reply also the header
 * of the request it answers (PROTOCOL.md §5), so that a reply sealed for
 * one request never opens as the answer to another. */
static size_t make_ad(uint8_t ad[2 * MER_WIRE_HDR_LEN], const uint8_t *hdr,
		      const uint8_t *req)
{
	memcpy(ad, hdr, MER_WIRE_HDR_LEN);
	if (!req)
		return MER_WIRE_HDR_LEN;
	memcpy(ad + MER_WIRE_HDR_LEN, req, MER_WIRE_HDR_LEN);
	return 2 * MER_WIRE_HDR_LEN;
}

static int seal(struct mer_chan_session *s, int type, const uint8_t *req,
		const uint8_t *payload, size_t len, uint8_t *out, size_t cap,
		size_t *outlen)
{
	struct mer_wire_hdr h;
	uint8_t nonce[24], ad[2 * MER_WIRE_HDR_LEN];
	unsigned long long clen = 0;
	size_t adlen;

	if (cap < MER_WIRE_OVERHEAD || len > cap - MER_WIRE_OVERHEAD)
		return MER_ETOOBIG;
	if (s->tx_counter == UINT64_MAX)
		return MER_EEXPIRED;
	h.type = (uint8_t)type;
	h.session = s->id;
	h.counter = s->tx_counter + 1;
	mer_wire_hdr_encode(&h, out);
	adlen = make_ad(ad, out, req);
	make_nonce(nonce, s->id, s->side == MER_CHAN_AGENT ? DIR_A2B : DIR_B2A,
		   h.counter);
	if (crypto_aead_xchacha20poly1305_ietf_encrypt(
		out + MER_WIRE_HDR_LEN, &clen, payload, len, ad, adlen, NULL,
		nonce, s->tx_key) != 0)
		return MER_ECRYPTO;
	s->tx_counter = h.counter;
	s->messages++;
	*outlen = MER_WIRE_HDR_LEN + (size_t)clen;
	return 0;
}

int mer_chan_seal(struct mer_chan_session *s, int type, const uint8_t *payload,
		  size_t len, uint8_t *out, size_t cap, size_t *outlen)
{
	if (s->side != MER_CHAN_AGENT || !is_request(type))
		return MER_EINVAL;
	return seal(s, type, NULL, payload, len, out, cap, outlen);
}

int mer_chan_seal_reply(struct mer_chan_session *s, int type,
			const uint8_t req[MER_WIRE_HDR_LEN],
			const uint8_t *payload, size_t len, uint8_t *out,
			size_t cap, size_t *outlen)
{
	if (s->side != MER_CHAN_BROKER || !is_reply(type) || !req)
		return MER_EINVAL;
	return seal(s, type, req, payload, len, out, cap, outlen);
}

/* Replay window check (no update): 0, or the reason. */
static int window_check(const struct mer_chan_session *s, uint64_t ctr)
{
	uint64_t diff;

	if (ctr > s->rx_max)
		return -1;
	diff = s->rx_max - ctr;
	if (diff >= MER_CHAN_REPLAY_WINDOW)
		return MER_CHAN_R_OUT_OF_WINDOW;
	if (s->rx_bitmap & ((uint64_t)1 << diff))
		return MER_CHAN_R_REPLAY;
	return -1;
}

static void window_update(struct mer_chan_session *s, uint64_t ctr)
{
	if (ctr > s->rx_max) {
		uint64_t shift = ctr - s->rx_max;
		s->rx_bitmap =
		    shift >= MER_CHAN_REPLAY_WINDOW ? 0 : s->rx_bitmap << shift;
		s->rx_bitmap |= 1;
		s->rx_max = ctr;
	} else {
		s->rx_bitmap |= (uint64_t)1 << (s->rx_max - ctr);
	}
}

static int open_msg(struct mer_chan_session *s, const uint8_t *msg, size_t len,
		    const uint8_t *req, int *type, uint8_t *out, size_t cap,
		    size_t *outlen, int *reason)
{
	struct mer_wire_hdr h;
	uint8_t nonce[24], ad[2 * MER_WIRE_HDR_LEN];
	unsigned long long plen = 0;
	size_t adlen;
	int rv, w;

	rv = mer_wire_hdr_decode(msg, len, &h);
	if (rv != 0) {
		set_reason(reason, rv == MER_EUNSUPPORTED
				       ? MER_CHAN_R_VERSION
				       : MER_CHAN_R_MALFORMED);
		return MER_EPARSE;
	}
	if (!mer_wire_type_sealed(h.type) || h.counter == 0) {
		set_reason(reason, MER_CHAN_R_MALFORMED);
		return MER_EPARSE;
	}
	if (req ? !is_reply(h.type) : !is_request(h.type)) {
		set_reason(reason, MER_CHAN_R_BAD_TYPE);
		return MER_EPARSE;
	}
	if (len < MER_WIRE_OVERHEAD) {
		set_reason(reason, MER_CHAN_R_TRUNCATED);
		return MER_EPARSE;
	}
	if (h.session != s->id) {
		set_reason(reason, MER_CHAN_R_UNKNOWN_SESSION);
		return MER_ENOTFOUND;
	}
	if (cap < len - MER_WIRE_OVERHEAD) {
		set_reason(reason, MER_CHAN_R_OVERSIZE);
		return MER_ETOOBIG;
	}
	w = window_check(s, h.counter);
	if (w >= 0) {
		set_reason(reason, w);
		return MER_EREPLAY;
	}
	adlen = make_ad(ad, msg, req);
	make_nonce(nonce, s->id, s->side == MER_CHAN_AGENT ? DIR_B2A : DIR_A2B,
		   h.counter);
	if (crypto_aead_xchacha20poly1305_ietf_decrypt(
		out, &plen, NULL, msg + MER_WIRE_HDR_LEN,
		len - MER_WIRE_HDR_LEN, ad, adlen, nonce, s->rx_key) != 0) {
		set_reason(reason, MER_CHAN_R_AUTH_FAILED);
		return MER_ECRYPTO;
	}
	window_update(s, h.counter);
	s->messages++;
	*type = h.type;
	*outlen = (size_t)plen;
	return 0;
}

int mer_chan_open(struct mer_chan_session *s, const uint8_t *msg, size_t len,
		  int *type, uint8_t *out, size_t cap, size_t *outlen,
		  int *reason)
{
	if (s->side != MER_CHAN_BROKER) {
		set_reason(reason, MER_CHAN_R_BAD_TYPE);
		return MER_EINVAL;
	}
	return open_msg(s, msg, len, NULL, type, out, cap, outlen, reason);
}

int mer_chan_open_reply(struct mer_chan_session *s, const uint8_t *msg,
			size_t len, const uint8_t req[MER_WIRE_HDR_LEN],
			int *type, uint8_t *out, size_t cap, size_t *outlen,
			int *reason)
{
	if (s->side != MER_CHAN_AGENT || !req) {
		set_reason(reason, MER_CHAN_R_BAD_TYPE);
		return MER_EINVAL;
	}
	return open_msg(s, msg, len, req, type, out, cap, outlen, reason);
}

void mer_chan_notice_make(uint16_t code, uint8_t reason,
			  uint8_t out[MER_CHAN_NOTICE_LEN])
{
	struct mer_wire_hdr h = {.type = MER_WIRE_NOTICE};

	mer_wire_hdr_encode(&h, out);
	mer_wire_put_u16(out + MER_WIRE_HDR_LEN, code);
	out[MER_WIRE_HDR_LEN + 2] = reason;
}

int mer_chan_notice_parse(const uint8_t *msg, size_t len, uint16_t *code,
			  uint8_t *reason)
{
	struct mer_wire_hdr h;

	if (len != MER_CHAN_NOTICE_LEN || mer_wire_hdr_decode(msg, len, &h) ||
	    h.type != MER_WIRE_NOTICE)
		return MER_EPARSE;
	*code = mer_wire_get_u16(msg + MER_WIRE_HDR_LEN);
	*reason = msg[MER_WIRE_HDR_LEN + 2];
	return 0;
}
