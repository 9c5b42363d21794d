/*
 * The federation link's secure channel as pure functions (no sockets, no
 * clock): the one-round-trip handshake (HELLO/WELCOME), sealing and opening
 * messages with XChaCha20-Poly1305 and the header as associated data, the
 * per-direction counters and replay window, plaintext NOTICE errors and the
 * names of rejection reasons. docs/PROTOCOL.md §4–§8 is the specification.
 * A session is not thread-safe: callers serialize seal/open on one session.
 */
#ifndef MERIDIAN_CHANNEL_H
#define MERIDIAN_CHANNEL_H

#include <stddef.h>
#include <stdint.h>

#include "keys.h"
#include "wire.h"

#define MER_CHAN_HELLO_BODY 65
#define MER_CHAN_WELCOME_BODY 110
#define MER_CHAN_NOTICE_BODY 3
#define MER_CHAN_HELLO_LEN (MER_WIRE_HDR_LEN + MER_CHAN_HELLO_BODY)
#define MER_CHAN_WELCOME_LEN (MER_WIRE_HDR_LEN + MER_CHAN_WELCOME_BODY)
#define MER_CHAN_NOTICE_LEN (MER_WIRE_HDR_LEN + MER_CHAN_NOTICE_BODY)
#define MER_CHAN_REPLAY_WINDOW 64
#define MER_CHAN_HELLO_JOIN 0x01

#define MER_CHAN_DEFAULT_REKEY_S 3600u
#define MER_CHAN_DEFAULT_REKEY_MSGS (1u << 20)

/* Why a message was rejected; names in mer_chan_reason_name are the
 * /metrics label values (PROTOCOL.md §8). Append only. */
enum mer_chan_reason {
	MER_CHAN_R_MALFORMED = 0,
	MER_CHAN_R_VERSION,
	MER_CHAN_R_OVERSIZE,
	MER_CHAN_R_TRUNCATED,
	MER_CHAN_R_UNKNOWN_SESSION,
	MER_CHAN_R_REPLAY,
	MER_CHAN_R_OUT_OF_WINDOW,
	MER_CHAN_R_AUTH_FAILED,
	MER_CHAN_R_EXPIRED,
	MER_CHAN_R_REVOKED,
	MER_CHAN_R_UNREGISTERED,
	MER_CHAN_R_BAD_TYPE,
	MER_CHAN_R_BAD_PAYLOAD,
	MER_CHAN_R_BROKER_KEY,
	MER_CHAN_R_HANDSHAKE,
	MER_CHAN_R_COUNT
};

/* "replay", "auth_failed", ...; "unknown" out of range. */
const char *mer_chan_reason_name(int reason);

enum mer_chan_side { MER_CHAN_AGENT = 1, MER_CHAN_BROKER = 2 };

/* Keys and counters of one established session. Wipe with
 * mer_chan_session_wipe. */
struct mer_chan_session {
	uint64_t id;
	int side;
	uint8_t tx_key[32];
	uint8_t rx_key[32];
	uint64_t tx_counter; /* last counter sealed; 0 before the first */
	uint64_t rx_max;     /* highest counter opened */
	uint64_t rx_bitmap;  /* bit i: counter rx_max - i was opened */
	uint64_t messages;   /* sealed plus opened */
	uint8_t peer_pk[MER_KEY_BYTES];
	uint32_t rekey_after_s;
	uint32_t rekey_after_msgs;
};

void mer_chan_session_wipe(struct mer_chan_session *s);

/* ---- agent side of the handshake ---- */

/* State between sending HELLO and reading WELCOME. Holds a copy of the
 * site's key pair; wipe with mer_chan_hello_wipe. */
struct mer_chan_hello {
	struct mer_keypair eph;
	struct mer_keypair site;
	uint8_t msg[MER_CHAN_HELLO_LEN]; /* the HELLO to send */
};

/* Makes a fresh ephemeral key and the HELLO message in hs->msg. */
int mer_chan_hello_make(struct mer_chan_hello *hs,
			const struct mer_keypair *site, int join) MER_WUR;

/*
 * Verifies WELCOME (msg, len) against the HELLO in hs and the pinned broker
 * fingerprint. Returns 0 when the WELCOME is authentic; *status then holds
 * the broker's verdict (0, or MER_EAUTH / MER_EREVOKED / ... refusing the
 * session) and, when *status is 0, s is the new session. Otherwise returns
 * MER_EPARSE (malformed), MER_EAUTH (broker key does not match the pin) or
 * MER_ECRYPTO (confirmation wrong, low-order point), and *reason (may be
 * NULL) names why. hs is left intact (the caller wipes it).
 */
int mer_chan_hello_finish(struct mer_chan_hello *hs, const uint8_t *msg,
			  size_t len, const char *pinned_fp,
			  struct mer_chan_session *s, int *status,
			  int *reason) MER_WUR;

void mer_chan_hello_wipe(struct mer_chan_hello *hs);

/* ---- broker side of the handshake ---- */

struct mer_chan_hello_info {
	int join;			 /* JOIN flag set */
	uint8_t agent_pk[MER_KEY_BYTES]; /* long-term key claimed */
};

/* Checks a HELLO's shape and reads it. MER_EPARSE when malformed. */
int mer_chan_hello_parse(const uint8_t *msg, size_t len,
			 struct mer_chan_hello_info *info) MER_WUR;

/*
 * Answers a HELLO (already parsed by mer_chan_hello_parse) with a WELCOME
 * written to out. status 0 accepts and fills s (session id session_id,
 * which must not be 0); a non-zero status refuses (session id 0 is sent and
 * s is wiped) but is still authenticated for the agent. MER_ECRYPTO when
 * the agent's keys are low-order points.
 */
int mer_chan_welcome_make(const struct mer_keypair *broker,
			  const uint8_t *hello, size_t hello_len,
			  uint16_t status, uint64_t session_id,
			  uint32_t rekey_after_s, uint32_t rekey_after_msgs,
			  uint8_t out[MER_CHAN_WELCOME_LEN],
			  struct mer_chan_session *s) MER_WUR;

/* ---- sealed messages ---- */

/*
 * Requests (REPORT, POLL, JOIN) go agent to broker; replies (ACK, COMMANDS,
 * ERROR) go broker to agent, and a reply is bound to the request it answers:
 * its associated data is its own header followed by the request's header
 * (PROTOCOL.md §5), so a reply cannot be passed off as the answer to
 * another request. Using the wrong function for a side or a type is
 * MER_EINVAL.
 */

/*
 * Agent side: seals payload (len bytes) as a request of the given type into
 * out (capacity cap; needs len + MER_WIRE_OVERHEAD), using the next counter.
 * MER_ETOOBIG when out is too small, MER_EINVAL for a type that is not a
 * request or a broker session, MER_EEXPIRED when the counter space is used
 * up.
 */
int mer_chan_seal(struct mer_chan_session *s, int type, const uint8_t *payload,
		  size_t len, uint8_t *out, size_t cap, size_t *outlen) MER_WUR;

/*
 * Broker side: seals a reply of the given type to the request whose header
 * (the first MER_WIRE_HDR_LEN bytes of the request as received) is req.
 * Errors as mer_chan_seal.
 */
int mer_chan_seal_reply(struct mer_chan_session *s, int type,
			const uint8_t req[MER_WIRE_HDR_LEN],
			const uint8_t *payload, size_t len, uint8_t *out,
			size_t cap, size_t *outlen) MER_WUR;

/*
 * Broker side: authenticates and decrypts a request msg into out (capacity
 * cap; needs len - MER_WIRE_OVERHEAD). On success *type is the message type
 * and *outlen the payload length, and the replay window moves. On failure
 * nothing in s changes and *reason (may be NULL) is set:
 *   MER_EPARSE    malformed, truncated, not a sealed type, bad_type (a
 *                 reply type where a request is wanted, or the reverse)
 *   MER_ENOTFOUND the header's session id is not s->id
 *   MER_EREPLAY   replay, out_of_window
 *   MER_ECRYPTO   auth_failed (tampered header or body)
 *   MER_ETOOBIG   out too small
 *   MER_EINVAL    s is an agent session (use mer_chan_open_reply)
 */
int mer_chan_open(struct mer_chan_session *s, const uint8_t *msg, size_t len,
		  int *type, uint8_t *out, size_t cap, size_t *outlen,
		  int *reason) MER_WUR;

/*
 * Agent side: opens a reply to the request whose header (the first
 * MER_WIRE_HDR_LEN bytes of the request as sent) is req. A reply sealed for
 * any other request fails with MER_ECRYPTO (auth_failed). Otherwise as
 * mer_chan_open.
 */
int mer_chan_open_reply(struct mer_chan_session *s, const uint8_t *msg,
			size_t len, const uint8_t req[MER_WIRE_HDR_LEN],
			int *type, uint8_t *out, size_t cap, size_t *outlen,
			int *reason) MER_WUR;

/* ---- plaintext NOTICE (unauthenticated errors) ---- */

void mer_chan_notice_make(uint16_t code, uint8_t reason,
			  uint8_t out[MER_CHAN_NOTICE_LEN]);
/* MER_EPARSE unless msg is a well-formed NOTICE. */
int mer_chan_notice_parse(const uint8_t *msg, size_t len, uint16_t *code,
			  uint8_t *reason);

#endif
