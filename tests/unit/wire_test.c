/* Tests for common/wire: the 20-byte header, type numbers, byte order. */
#include "common/err.h"
#include "common/wire.h"
#include "tests/harness.h"

static void test_roundtrip(void)
{
	struct mer_wire_hdr h = {.type = MER_WIRE_REPORT,
				 .session = 0x0102030405060708ull,
				 .counter = 0xfffffffffffffffeull},
			    g;
	uint8_t b[MER_WIRE_HDR_LEN];

	mer_wire_hdr_encode(&h, b);
	T_EQ_INT(b[0], 'M');
	T_EQ_INT(b[1], 'R');
	T_EQ_INT(b[2], MER_WIRE_VERSION);
	T_EQ_INT(b[3], MER_WIRE_REPORT);
	T_EQ_INT(b[4], 0x01); /* big-endian session id */
	T_EQ_INT(b[11], 0x08);
	T_EQ_INT(b[19], 0xfe);
	T_OK(mer_wire_hdr_decode(b, sizeof(b), &g));
	T_EQ_INT(g.type, MER_WIRE_REPORT);
	T_EXPECT(g.session == h.session);
	T_EXPECT(g.counter == h.counter);
}

static void test_rejects(void)
{
	struct mer_wire_hdr h = {.type = MER_WIRE_POLL,
				 .session = 1,
				 .counter = 1},
			    g;
	uint8_t b[MER_WIRE_HDR_LEN];

	mer_wire_hdr_encode(&h, b);
	T_EQ_INT(mer_wire_hdr_decode(b, sizeof(b) - 1, &g), MER_EPARSE);
	T_EQ_INT(mer_wire_hdr_decode(NULL, 0, &g), MER_EPARSE);
	b[0] = 'X';
	T_EQ_INT(mer_wire_hdr_decode(b, sizeof(b), &g), MER_EPARSE);
	b[0] = 'M';
	b[2] = 2;
	T_EQ_INT(mer_wire_hdr_decode(b, sizeof(b), &g), MER_EUNSUPPORTED);
	T_EQ_INT(g.version, 2);
	b[2] = MER_WIRE_VERSION;
	b[3] = 99;
	T_EQ_INT(mer_wire_hdr_decode(b, sizeof(b), &g), MER_EPARSE);
}

static void test_types(void)
{
	static const struct {
		int type;
		int sealed;
		const char *name;
	} cases[] = {
	    {MER_WIRE_HELLO, 0, "hello"},   {MER_WIRE_WELCOME, 0, "welcome"},
	    {MER_WIRE_NOTICE, 0, "notice"}, {MER_WIRE_REPORT, 1, "report"},
	    {MER_WIRE_POLL, 1, "poll"},	    {MER_WIRE_JOIN, 1, "join"},
	    {MER_WIRE_ACK, 1, "ack"},	    {MER_WIRE_COMMANDS, 1, "commands"},
	    {MER_WIRE_ERROR, 1, "error"},   {7, 0, "unknown"},
	};
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		T_EQ_INT(mer_wire_type_sealed(cases[i].type), cases[i].sealed);
		T_EQ_STR(mer_wire_type_name(cases[i].type), cases[i].name);
	}
}

static void test_integers(void)
{
	uint8_t b[8];

	mer_wire_put_u32(b, 0xdeadbeef);
	T_EQ_INT(b[0], 0xde);
	T_EXPECT(mer_wire_get_u32(b) == 0xdeadbeef);
	mer_wire_put_u16(b, 0xbeef);
	T_EQ_INT(mer_wire_get_u16(b), 0xbeef);
	mer_wire_put_u64(b, 1);
	T_EQ_INT(b[7], 1);
	T_EXPECT(mer_wire_get_u64(b) == 1);
}

static const struct t_case cases[] = {
    {"roundtrip", test_roundtrip},
    {"rejects", test_rejects},
    {"types", test_types},
    {"integers", test_integers},
};

T_MAIN("wire", cases)
