/*
 * The federation link's 20-byte message header (docs/PROTOCOL.md §2) and
 * the message type numbers. Pure encode/decode; sealing is channel.h.
 */
#ifndef MERIDIAN_WIRE_H
#define MERIDIAN_WIRE_H

#include <stddef.h>
#include <stdint.h>

#define MER_WIRE_MAGIC0 0x4d /* 'M' */
#define MER_WIRE_MAGIC1 0x52 /* 'R' */
#define MER_WIRE_VERSION 1
#define MER_WIRE_HDR_LEN 20
#define MER_WIRE_TAG_LEN 16
#define MER_WIRE_OVERHEAD (MER_WIRE_HDR_LEN + MER_WIRE_TAG_LEN)
#define MER_WIRE_DEFAULT_MAX_PAYLOAD (1u << 20)
#define MER_WIRE_LIMIT_MAX_PAYLOAD (16u << 20)

enum mer_wire_type {
	MER_WIRE_HELLO = 1,
	MER_WIRE_WELCOME = 2,
	MER_WIRE_NOTICE = 3,
	MER_WIRE_REPORT = 16,
	MER_WIRE_POLL = 17,
	MER_WIRE_JOIN = 18,
	MER_WIRE_ACK = 32,
	MER_WIRE_COMMANDS = 33,
	MER_WIRE_ERROR = 34
};

struct mer_wire_hdr {
	uint8_t version;
	uint8_t type;
	uint64_t session;
	uint64_t counter;
};

/* Writes the header for h into out (MER_WIRE_HDR_LEN bytes); the version
 * written is always MER_WIRE_VERSION. */
void mer_wire_hdr_encode(const struct mer_wire_hdr *h,
			 uint8_t out[MER_WIRE_HDR_LEN]);

/*
 * Reads a header from the first len bytes of buf. MER_EPARSE when buf is
 * shorter than a header, has the wrong magic or an unknown type;
 * MER_EUNSUPPORTED for a version other than MER_WIRE_VERSION (h->version
 * then holds it).
 */
int mer_wire_hdr_decode(const uint8_t *buf, size_t len, struct mer_wire_hdr *h);

/* True for types whose body is sealed (REPORT, POLL, JOIN, ACK, COMMANDS,
 * ERROR). */
int mer_wire_type_sealed(int type);
/* "hello", "report", ...; "unknown" for others. */
const char *mer_wire_type_name(int type);

/* Big-endian helpers, shared with channel.c. */
void mer_wire_put_u64(uint8_t *p, uint64_t v);
uint64_t mer_wire_get_u64(const uint8_t *p);
void mer_wire_put_u32(uint8_t *p, uint32_t v);
uint32_t mer_wire_get_u32(const uint8_t *p);
void mer_wire_put_u16(uint8_t *p, uint16_t v);
uint16_t mer_wire_get_u16(const uint8_t *p);

#endif
