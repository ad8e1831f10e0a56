-- tunstack.lua: a Wireshark/tshark dissector for tunstack's own IP protocols
--   170  tunstack.msg   reliable messages and discovery (DATA, ACK, HELLO)
--   171  tunstack.file  file transfer (OFFER, ACCEPT, REFUSE, DATA, ACK, DONE, RESET, CANCEL)
--
-- Formats: docs/protocols.md, src/msg/wire.rs, src/file/wire.rs.
--
-- Loading it:
--   tshark -X lua_script:tools/wireshark/tunstack.lua -r capture.pcap
--   tshark -X lua_script:tools/wireshark/tunstack.lua -r capture.pcap -V -Y tunstack.msg
--   wireshark -X lua_script:tools/wireshark/tunstack.lua capture.pcap
-- or install it for every run:
--   mkdir -p ~/.local/lib/wireshark/plugins && cp tools/wireshark/tunstack.lua "$_"
--
-- Filter examples: tunstack.msg.type == 1, tunstack.msg.content contains "hello",
-- tunstack.msg.checksum.status == 0 (bad CRC), tunstack.file.name == "notes.txt",
-- tunstack.file.offset >= 1048576.
--
-- Works with the Lua 5.2 of Wireshark 3.x/4.0 (bit32) and with Lua 5.3/5.4 (native operators).

---------------------------------------------------------------------------------------------
-- CRC-32C (Castagnoli): reflected polynomial 0x82F63B78, initial value and final xor all ones.
-- The packet CRC covers the whole packet with its own field (bytes 4..7) read as zero.
---------------------------------------------------------------------------------------------

local band, bxor, rshift
if bit32 then
    band, bxor, rshift = bit32.band, bit32.bxor, bit32.rshift
else
    -- Lua 5.3+: compile the operators at run time so that Lua 5.2 never parses them.
    band, bxor, rshift = load([[
        return function(a, b) return a & b end,
               function(a, b) return a ~ b end,
               function(a, n) return a >> n end
    ]])()
end

local CRC_TABLE = {}
for i = 0, 255 do
    local c = i
    for _ = 1, 8 do
        if band(c, 1) ~= 0 then
            c = bxor(rshift(c, 1), 0x82F63B78)
        else
            c = rshift(c, 1)
        end
    end
    CRC_TABLE[i] = c
end

local function crc32c(s)
    local crc = 0xFFFFFFFF
    local byte = string.byte
    for i = 1, #s do
        crc = bxor(CRC_TABLE[band(bxor(crc, byte(s, i)), 0xFF)], rshift(crc, 8))
    end
    return bxor(crc, 0xFFFFFFFF)
end

assert(crc32c("123456789") == 0xE3069283, "tunstack.lua: CRC-32C self-test failed")

---------------------------------------------------------------------------------------------
-- Shared pieces
---------------------------------------------------------------------------------------------

local HEADER_LEN = 44
local VERSION = 1

local CRC_STATUS = { [0] = "incorrect", [1] = "correct", [2] = "unverified" }

-- Info-column text for a possibly long, possibly binary string.
local function preview(s, max)
    max = max or 40
    s = s:gsub("[%c]", " ")
    if #s > max then
        s = s:sub(1, max) .. "..."
    end
    return s
end

local function hex64(v)
    return "0x" .. v:tohex()
end

-- Fields and expert infos common to both protocols; `p` is the filter prefix.
local function header_fields(p, type_names)
    return {
        version = ProtoField.uint8(p .. ".version", "Version", base.DEC),
        type = ProtoField.uint8(p .. ".type", "Type", base.DEC, type_names),
        flags = ProtoField.uint8(p .. ".flags", "Flags", base.HEX),
        reserved = ProtoField.uint8(p .. ".reserved", "Reserved", base.HEX),
        checksum = ProtoField.uint32(p .. ".checksum", "CRC-32C", base.HEX),
        checksum_calc = ProtoField.uint32(p .. ".checksum.calculated", "Calculated CRC-32C", base.HEX),
        checksum_status = ProtoField.uint8(p .. ".checksum.status", "CRC-32C status", base.DEC, CRC_STATUS),
        node_id = ProtoField.uint64(p .. ".node_id", "Sender node id", base.HEX),
        epoch = ProtoField.uint64(p .. ".epoch", "Sender boot epoch", base.DEC),
        peer_epoch = ProtoField.uint64(p .. ".peer_epoch", "Receiver boot epoch (as known; 0 = unknown)", base.DEC),
        seq = ProtoField.uint32(p .. ".seq", "Seq", base.DEC),
        ack = ProtoField.uint32(p .. ".ack", "Ack", base.DEC),
        length = ProtoField.uint16(p .. ".length", "Payload length", base.DEC),
        reserved2 = ProtoField.uint16(p .. ".reserved2", "Reserved", base.HEX),
    }
end

local function header_experts(p)
    return {
        bad_crc = ProtoExpert.new(p .. ".bad_crc", "CRC-32C incorrect (the stack drops this packet)",
            expert.group.CHECKSUM, expert.severity.ERROR),
        bad_version = ProtoExpert.new(p .. ".bad_version", "Unknown version (the stack drops this packet)",
            expert.group.PROTOCOL, expert.severity.ERROR),
        bad_length = ProtoExpert.new(p .. ".bad_length", "Payload length does not match the IP payload",
            expert.group.MALFORMED, expert.severity.ERROR),
        short = ProtoExpert.new(p .. ".short", "Shorter than the 44-byte header",
            expert.group.MALFORMED, expert.severity.ERROR),
        reserved = ProtoExpert.new(p .. ".reserved_nonzero", "Reserved field is not zero",
            expert.group.PROTOCOL, expert.severity.WARN),
        bad_payload = ProtoExpert.new(p .. ".bad_payload", "Malformed payload (the stack drops this packet)",
            expert.group.MALFORMED, expert.severity.ERROR),
        unknown_type = ProtoExpert.new(p .. ".unknown_type", "Unknown packet type",
            expert.group.PROTOCOL, expert.severity.WARN),
        note = ProtoExpert.new(p .. ".note", "Note", expert.group.SEQUENCE, expert.severity.NOTE),
    }
end

local function list_values(t)
    local out = {}
    for _, v in pairs(t) do
        out[#out + 1] = v
    end
    return out
end

-- Dissects the 44-byte header into `tree`. Returns a table describing it, or nil when the packet
-- is too short to have one.
local function dissect_header(tvb, tree, f, e, type_names, flag_names_for)
    local total = tvb:reported_len()
    if tvb:len() < HEADER_LEN then
        tree:add_proto_expert_info(e.short, string.format("%d bytes, a header needs %d", tvb:len(), HEADER_LEN))
        return nil
    end
    local h = {
        version = tvb(0, 1):uint(),
        type = tvb(1, 1):uint(),
        flags = tvb(2, 1):uint(),
        crc = tvb(4, 4):uint(),
        node_id = tvb(8, 8):uint64(),
        epoch = tvb(16, 8):uint64(),
        peer_epoch = tvb(24, 8):uint64(),
        seq = tvb(32, 4):uint(),
        ack = tvb(36, 4):uint(),
        length = tvb(40, 2):uint(),
    }
    h.type_name = type_names[h.type] or string.format("type %d", h.type)

    local hdr = tree:add(tvb(0, HEADER_LEN), "Header")
    local it = hdr:add(f.version, tvb(0, 1))
    if h.version ~= VERSION then
        it:add_proto_expert_info(e.bad_version, string.format("Version %d, expected %d", h.version, VERSION))
    end
    it = hdr:add(f.type, tvb(1, 1))
    if not type_names[h.type] then
        it:add_proto_expert_info(e.unknown_type)
    end

    local fit = hdr:add(f.flags, tvb(2, 1))
    h.flag_text = {}
    local known = 0
    for _, fl in ipairs(flag_names_for(h.type)) do
        known = known + fl.mask
        fit:add(fl.field, tvb(2, 1))
        if band(h.flags, fl.mask) ~= 0 then
            h.flag_text[#h.flag_text + 1] = fl.name
        end
    end
    local unknown = band(h.flags, bxor(0xFF, known))
    if unknown ~= 0 then
        h.flag_text[#h.flag_text + 1] = string.format("0x%02x", unknown)
    end
    if #h.flag_text > 0 then
        fit:append_text(" (" .. table.concat(h.flag_text, ", ") .. ")")
    end

    it = hdr:add(f.reserved, tvb(3, 1))
    if tvb(3, 1):uint() ~= 0 then
        it:add_proto_expert_info(e.reserved)
    end

    -- CRC-32C over the whole packet, with the field itself read as zero.
    local cit = hdr:add(f.checksum, tvb(4, 4))
    if tvb:len() < total then
        h.crc_status = 2
        cit:append_text(" [unverified: packet not fully captured]")
    else
        local raw = tvb:raw(0, total)
        local calc = crc32c(raw:sub(1, 4) .. "\0\0\0\0" .. raw:sub(9))
        h.crc_status = (calc == h.crc) and 1 or 0
        if h.crc_status == 1 then
            cit:append_text(" [correct]")
        else
            cit:append_text(string.format(" [incorrect, should be 0x%08x]", calc))
            cit:add_proto_expert_info(e.bad_crc, string.format("CRC-32C incorrect: packet says 0x%08x, bytes give 0x%08x", h.crc, calc))
        end
        cit:add(f.checksum_calc, tvb(4, 4), calc):set_generated()
    end
    cit:add(f.checksum_status, tvb(4, 4), h.crc_status):set_generated()

    hdr:add(f.node_id, tvb(8, 8))
    hdr:add(f.epoch, tvb(16, 8))
    hdr:add(f.peer_epoch, tvb(24, 8))
    h.seq_item = hdr:add(f.seq, tvb(32, 4))
    h.ack_item = hdr:add(f.ack, tvb(36, 4))
    local lit = hdr:add(f.length, tvb(40, 2))
    if HEADER_LEN + h.length ~= total then
        lit:append_text(string.format(" [IP payload has %d]", total - HEADER_LEN))
        lit:add_proto_expert_info(e.bad_length,
            string.format("Payload length %d, but the IP payload carries %d after the header", h.length, total - HEADER_LEN))
    end
    it = hdr:add(f.reserved2, tvb(42, 2))
    if tvb(42, 2):uint() ~= 0 then
        it:add_proto_expert_info(e.reserved)
    end

    -- Decode what is actually there: the stated length, bounded by the captured bytes.
    h.payload_len = math.max(0, math.min(h.length, tvb:len() - HEADER_LEN))
    hdr:append_text(string.format(", %s, seq %d, ack %d, CRC %s", h.type_name, h.seq, h.ack, CRC_STATUS[h.crc_status]))
    return h
end

-- A bounds-checked cursor over a Tvb for payload fields. Every read returns nil once the data runs
-- out; `r.short` then says so.
local function cursor(tvb, offset, limit)
    local r = { tvb = tvb, pos = offset, limit = limit, short = false }
    function r:take(n)
        if self.short or self.pos + n > self.limit then
            self.short = true
            return nil
        end
        local range = self.tvb(self.pos, n)
        self.pos = self.pos + n
        return range
    end
    function r:left()
        return self.limit - self.pos
    end
    return r
end

local function add_uint(tree, r, field, n)
    local range = r:take(n)
    if not range then return nil end
    tree:add(field, range)
    if n == 8 then return range:uint64() end
    return range:uint()
end

-- A string preceded by an `lenbytes`-byte length; adds the length and the string fields.
local function add_str(tree, r, len_field, str_field, lenbytes)
    local lr = r:take(lenbytes)
    if not lr then return nil end
    local n = lr:uint()
    if len_field then tree:add(len_field, lr) end
    if n == 0 then
        tree:add(str_field, lr, ""):set_generated()
        return ""
    end
    local sr = r:take(n)
    if not sr then return nil end
    local s = sr:string(ENC_UTF_8)
    tree:add(str_field, sr, s)
    return s
end

---------------------------------------------------------------------------------------------
-- Protocol 170: messages and discovery
---------------------------------------------------------------------------------------------

local msg_proto = Proto("tunstack.msg", "tunstack messages (IP protocol 170)")

local MSG_TYPES = { [1] = "DATA", [2] = "ACK", [3] = "HELLO" }
local MSG_DATA, MSG_ACK, MSG_HELLO = 1, 2, 3

local mf = header_fields("tunstack.msg", MSG_TYPES)
mf.flag_syn = ProtoField.bool("tunstack.msg.flags.syn", "SYN (first segment of a stream)", 8, nil, 0x01)
mf.flag_first = ProtoField.bool("tunstack.msg.flags.first", "FIRST (first segment of a message)", 8, nil, 0x02)
mf.flag_last = ProtoField.bool("tunstack.msg.flags.last", "LAST (last segment of a message)", 8, nil, 0x04)
mf.flag_request = ProtoField.bool("tunstack.msg.flags.request", "REQUEST (answer wanted)", 8, nil, 0x01)
mf.flag_echo = ProtoField.bool("tunstack.msg.flags.echo", "ECHO (ack echoes a nonce)", 8, nil, 0x02)
-- DATA
mf.segment = ProtoField.bytes("tunstack.msg.segment", "Segment data")
mf.segment_len = ProtoField.uint32("tunstack.msg.segment_length", "Segment length", base.DEC)
mf.reassembled_in = ProtoField.framenum("tunstack.msg.reassembled_in", "Message completed in frame")
mf.segments = ProtoField.uint32("tunstack.msg.segment_count", "Segments in message", base.DEC)
mf.message_id = ProtoField.uint64("tunstack.msg.message_id", "Message id (sender's, kept when renumbered)", base.DEC)
mf.channel_len = ProtoField.uint16("tunstack.msg.channel_length", "Channel length", base.DEC)
mf.channel = ProtoField.string("tunstack.msg.channel", "Channel", base.UNICODE)
mf.sender_len = ProtoField.uint16("tunstack.msg.sender_length", "Sender length", base.DEC)
mf.sender = ProtoField.string("tunstack.msg.sender", "Sender", base.UNICODE)
mf.timestamp_len = ProtoField.uint8("tunstack.msg.timestamp_length", "Timestamp length", base.DEC)
mf.timestamp = ProtoField.string("tunstack.msg.timestamp", "Timestamp", base.UNICODE)
mf.is_file = ProtoField.uint8("tunstack.msg.is_file", "Is file", base.DEC, { [0] = "no", [1] = "yes" })
mf.content_len = ProtoField.uint32("tunstack.msg.content_length", "Content length", base.DEC)
mf.content = ProtoField.string("tunstack.msg.content", "Content", base.UNICODE)
-- ACK
mf.sack_count = ProtoField.uint8("tunstack.msg.sack_count", "SACK ranges", base.DEC)
mf.sack_start = ProtoField.uint32("tunstack.msg.sack.start", "Start", base.DEC)
mf.sack_end = ProtoField.uint32("tunstack.msg.sack.end", "End (exclusive)", base.DEC)
-- HELLO
mf.name_len = ProtoField.uint8("tunstack.msg.hello.name_length", "Name length", base.DEC)
mf.name = ProtoField.string("tunstack.msg.hello.name", "Node name", base.UNICODE)
mf.peer_count = ProtoField.uint8("tunstack.msg.hello.peer_count", "Alive peers", base.DEC)
mf.peer = ProtoField.ipv4("tunstack.msg.hello.peer", "Peer")
mf.trailing = ProtoField.bytes("tunstack.msg.trailing", "Trailing bytes")
msg_proto.fields = list_values(mf)

local me = header_experts("tunstack.msg")
msg_proto.experts = list_values(me)

local MSG_FLAGS = {
    [MSG_DATA] = {
        { mask = 0x01, name = "SYN", field = mf.flag_syn },
        { mask = 0x02, name = "FIRST", field = mf.flag_first },
        { mask = 0x04, name = "LAST", field = mf.flag_last },
    },
    [MSG_HELLO] = {
        { mask = 0x01, name = "REQUEST", field = mf.flag_request },
        { mask = 0x02, name = "ECHO", field = mf.flag_echo },
    },
}
local function msg_flags_for(ty)
    return MSG_FLAGS[ty] or {}
end

local MAX_SACK_RANGES = 32
local MAX_HELLO_PEERS = 64
local SEQ_MOD = 4294967296

-- Segments seen so far, for reassembling messages that span several DATA segments:
-- segments[stream .. "#" .. seq] = { data = raw bytes, flags = flags, frame = number }.
local segments = {}
local completed_in = {} -- frame number of a FIRST/middle segment -> frame of its LAST segment

function msg_proto.init()
    segments = {}
    completed_in = {}
end

-- Decodes an encoded message (id, channel, sender, timestamp, is_file, content) from `tvb` into
-- `tree`. `whole` says the bytes should be the complete message. Returns a table of what could be
-- read and whether it was complete.
local function dissect_message(tvb, tree, whole)
    local r = cursor(tvb, 0, tvb:len())
    local m = {}
    m.id = add_uint(tree, r, mf.message_id, 8)
    m.channel = add_str(tree, r, mf.channel_len, mf.channel, 2)
    m.sender = add_str(tree, r, mf.sender_len, mf.sender, 2)
    m.timestamp = add_str(tree, r, mf.timestamp_len, mf.timestamp, 1)
    local fr = r:take(1)
    if fr then
        m.is_file = fr:uint()
        local it = tree:add(mf.is_file, fr)
        if m.is_file > 1 then
            it:add_proto_expert_info(me.bad_payload, "is_file must be 0 or 1")
        end
    end
    local clr = r:take(4)
    if clr then
        m.content_len = clr:uint()
        tree:add(mf.content_len, clr)
        local n = math.min(m.content_len, r:left())
        local cr = n > 0 and r:take(n) or nil
        m.content = cr and cr:string(ENC_UTF_8) or ""
        local it = tree:add(mf.content, cr or clr, m.content)
        if not cr then it:set_generated() end
        m.complete = (n == m.content_len)
        if not m.complete then
            it:append_text(string.format(" [first %d of %d bytes]", n, m.content_len))
            if whole then
                it:add_proto_expert_info(me.bad_payload, "Content shorter than its length says")
            end
        elseif r:left() > 0 then
            local tr = r:take(r:left())
            tree:add(mf.trailing, tr):add_proto_expert_info(me.bad_payload, "Bytes after the content")
        end
    elseif whole then
        tree:add_proto_expert_info(me.bad_payload, "Message encoding cut short")
    end
    return m
end

-- Looks back from the LAST segment at `seq` for the FIRST one; returns the segment list
-- (oldest first) or nil when some segment is not in the capture.
local function collect_segments(stream, seq)
    local list = {}
    local s = seq
    for _ = 1, 1000000 do
        local seg = segments[stream .. "#" .. s]
        if not seg then return nil end
        table.insert(list, 1, seg)
        if band(seg.flags, 0x02) ~= 0 then
            return list
        end
        s = (s + SEQ_MOD - 1) % SEQ_MOD
    end
    return nil
end

local function msg_info_content(m)
    local who = ""
    if m.sender and m.channel then
        who = string.format(" %s@%s", preview(m.sender, 20), preview(m.channel, 20))
    end
    if m.content then
        return string.format('%s "%s"', who, preview(m.content))
    end
    return who
end

local function dissect_msg_data(tvb, pinfo, tree, h, info)
    local plen = h.payload_len
    local first = band(h.flags, 0x02) ~= 0
    local last = band(h.flags, 0x04) ~= 0
    if plen == 0 then
        tree:add_proto_expert_info(me.bad_payload, "DATA without bytes")
        return
    end
    local seg = tvb(HEADER_LEN, plen)
    tree:add(mf.segment, seg)
    tree:add(mf.segment_len, seg, plen):set_generated()

    local stream = string.format("%s>%s/%s/%s", tostring(pinfo.src), tostring(pinfo.dst),
        h.node_id:tohex(), h.epoch:tohex())
    segments[stream .. "#" .. h.seq] = { data = seg:raw(), flags = h.flags, frame = pinfo.number }

    if first and last then
        local mt = tree:add(seg, "Message")
        local m = dissect_message(seg:tvb(), mt, true)
        info[#info + 1] = msg_info_content(m)
    elseif first then
        local mt = tree:add(seg, "Message (first segment)")
        local m = dissect_message(seg:tvb(), mt, false)
        local done = completed_in[pinfo.number]
        if done then
            mt:add(mf.reassembled_in, seg, done):set_generated()
        end
        info[#info + 1] = msg_info_content(m) .. " (continues)"
    elseif last then
        local list = collect_segments(stream, h.seq)
        if list then
            local parts = {}
            for i, s in ipairs(list) do
                parts[i] = s.data
                if s.frame ~= pinfo.number then
                    completed_in[s.frame] = pinfo.number
                end
            end
            local whole = ByteArray.new(table.concat(parts), true):tvb("Reassembled message")
            local mt = tree:add(whole(), string.format("Message (reassembled from %d segments, %d bytes)",
                #list, whole:len()))
            mt:add(mf.segments, seg, #list):set_generated()
            local m = dissect_message(whole, mt, true)
            info[#info + 1] = msg_info_content(m) .. string.format(" (reassembled, %d segments)", #list)
        else
            tree:add(seg, "Last segment of a message whose earlier segments are not in the capture")
            info[#info + 1] = string.format(" last segment, %d bytes", plen)
        end
    else
        local done = completed_in[pinfo.number]
        if done then
            tree:add(mf.reassembled_in, seg, done):set_generated()
        end
        info[#info + 1] = string.format(" middle segment, %d bytes", plen)
    end
end

local function dissect_msg_ack(tvb, tree, h, info)
    local r = cursor(tvb, HEADER_LEN, HEADER_LEN + h.payload_len)
    h.ack_item:append_text(" (cumulative: next expected seq)")
    info[#info + 1] = string.format(" ack=%d", h.ack)
    local n = add_uint(tree, r, mf.sack_count, 1)
    if not n then
        tree:add_proto_expert_info(me.bad_payload, "ACK without a range count")
        return
    end
    if n > MAX_SACK_RANGES then
        tree:add_proto_expert_info(me.bad_payload, string.format("%d SACK ranges, at most %d allowed", n, MAX_SACK_RANGES))
    end
    local text = {}
    for i = 1, n do
        local sr = r:take(8)
        if not sr then
            tree:add_proto_expert_info(me.bad_payload, "SACK ranges cut short")
            return
        end
        local a, b = sr(0, 4):uint(), sr(4, 4):uint()
        local rt = tree:add(sr, string.format("SACK range %d: [%d, %d)", i, a, b))
        rt:add(mf.sack_start, sr(0, 4))
        rt:add(mf.sack_end, sr(4, 4))
        text[#text + 1] = string.format("[%d,%d)", a, b)
    end
    if #text > 0 then
        info[#info + 1] = " sack=" .. table.concat(text, ",")
    end
    if r:left() > 0 then
        tree:add(mf.trailing, r:take(r:left())):add_proto_expert_info(me.bad_payload, "Bytes after the SACK ranges")
    end
end

local function dissect_msg_hello(tvb, tree, h, info)
    local r = cursor(tvb, HEADER_LEN, HEADER_LEN + h.payload_len)
    h.seq_item:append_text(" (nonce)")
    if band(h.flags, 0x02) ~= 0 then
        h.ack_item:append_text(" (echoed nonce)")
    end
    local name = add_str(tree, r, mf.name_len, mf.name, 1)
    local n = name and add_uint(tree, r, mf.peer_count, 1)
    if not n then
        tree:add_proto_expert_info(me.bad_payload, "HELLO cut short")
        return
    end
    if n > MAX_HELLO_PEERS then
        tree:add_proto_expert_info(me.bad_payload, string.format("%d peers, at most %d allowed", n, MAX_HELLO_PEERS))
    end
    local peers = {}
    for _ = 1, n do
        local pr = r:take(4)
        if not pr then
            tree:add_proto_expert_info(me.bad_payload, "Peer list cut short")
            break
        end
        tree:add(mf.peer, pr)
        peers[#peers + 1] = tostring(pr:ipv4())
    end
    info[#info + 1] = string.format(' name="%s" peers=%d', preview(name, 30), n)
    if #peers > 0 and #peers <= 4 then
        info[#info + 1] = " (" .. table.concat(peers, " ") .. ")"
    end
    if r:left() > 0 then
        tree:add(mf.trailing, r:take(r:left())):add_proto_expert_info(me.bad_payload, "Bytes after the peer list")
    end
end

function msg_proto.dissector(tvb, pinfo, tree)
    pinfo.cols.protocol = "TS-MSG"
    local root = tree:add(msg_proto, tvb(), "tunstack messages (IP protocol 170)")
    local h = dissect_header(tvb, root, mf, me, MSG_TYPES, msg_flags_for)
    if not h then
        pinfo.cols.info = "MSG [too short]"
        return tvb:len()
    end
    local info = { "MSG ", h.type_name }
    if h.type == MSG_DATA then
        info[#info + 1] = string.format(" seq=%d", h.seq)
    elseif h.type == MSG_HELLO then
        info[#info + 1] = string.format(" nonce=%d", h.seq)
        if band(h.flags, 0x02) ~= 0 then
            info[#info + 1] = string.format(" echo=%d", h.ack)
        end
    end
    if #h.flag_text > 0 then
        info[#info + 1] = " [" .. table.concat(h.flag_text, ",") .. "]"
    end
    local pt = root:add(tvb(HEADER_LEN, h.payload_len), string.format("Payload (%d bytes)", h.payload_len))
    if h.type == MSG_DATA then
        dissect_msg_data(tvb, pinfo, pt, h, info)
    elseif h.type == MSG_ACK then
        dissect_msg_ack(tvb, pt, h, info)
    elseif h.type == MSG_HELLO then
        dissect_msg_hello(tvb, pt, h, info)
    end
    if h.crc_status == 0 then
        info[#info + 1] = " [BAD CRC]"
    end
    pinfo.cols.info = table.concat(info)
    root:append_text(", " .. h.type_name)
    return tvb:len()
end

---------------------------------------------------------------------------------------------
-- Protocol 171: file transfer
---------------------------------------------------------------------------------------------

local file_proto = Proto("tunstack.file", "tunstack file transfer (IP protocol 171)")

local FILE_TYPES = {
    [1] = "OFFER", [2] = "ACCEPT", [3] = "REFUSE", [4] = "DATA",
    [5] = "ACK", [6] = "DONE", [7] = "RESET", [8] = "CANCEL",
}
local F_OFFER, F_ACCEPT, F_REFUSE, F_DATA, F_ACK, F_DONE, F_RESET, F_CANCEL = 1, 2, 3, 4, 5, 6, 7, 8
local DONE_STATUS = { [0] = "ok", [1] = "hash mismatch", [2] = "storage error" }
local MAX_RANGES = 64

local ff = header_fields("tunstack.file", FILE_TYPES)
ff.transfer_id = ProtoField.uint64("tunstack.file.transfer_id", "Transfer id", base.HEX)
-- OFFER
ff.size = ProtoField.uint64("tunstack.file.size", "File size", base.DEC)
ff.chunk_size = ProtoField.uint32("tunstack.file.chunk_size", "Chunk size", base.DEC)
ff.chunks = ProtoField.uint64("tunstack.file.chunk_count", "Chunks", base.DEC)
ff.sha256 = ProtoField.bytes("tunstack.file.sha256", "SHA-256")
ff.name_len = ProtoField.uint16("tunstack.file.name_length", "Name length", base.DEC)
ff.name = ProtoField.string("tunstack.file.name", "Name", base.UNICODE)
ff.channel_len = ProtoField.uint16("tunstack.file.channel_length", "Channel length", base.DEC)
ff.channel = ProtoField.string("tunstack.file.channel", "Channel", base.UNICODE)
ff.sender_len = ProtoField.uint16("tunstack.file.sender_length", "Sender length", base.DEC)
ff.sender = ProtoField.string("tunstack.file.sender", "Sender", base.UNICODE)
-- ACCEPT / ACK ranges
ff.cum = ProtoField.uint32("tunstack.file.cum", "Cumulative ack (first missing chunk)", base.DEC)
ff.range_count = ProtoField.uint16("tunstack.file.range_count", "Ranges", base.DEC)
ff.range_start = ProtoField.uint32("tunstack.file.range.start", "Start chunk", base.DEC)
ff.range_end = ProtoField.uint32("tunstack.file.range.end", "End chunk (exclusive)", base.DEC)
-- REFUSE / CANCEL / DONE
ff.reason_len = ProtoField.uint16("tunstack.file.reason_length", "Reason length", base.DEC)
ff.reason = ProtoField.string("tunstack.file.reason", "Reason (DONE: path or reason)", base.UNICODE)
ff.status = ProtoField.uint8("tunstack.file.status", "Status", base.DEC, DONE_STATUS)
-- DATA
ff.chunk = ProtoField.uint32("tunstack.file.chunk", "Chunk index", base.DEC)
ff.offset = ProtoField.uint64("tunstack.file.offset", "File offset", base.DEC)
ff.data = ProtoField.bytes("tunstack.file.data", "Chunk data")
ff.data_len = ProtoField.uint32("tunstack.file.data_length", "Chunk length", base.DEC)
ff.offer_in = ProtoField.framenum("tunstack.file.offer_in", "Offered in frame")
ff.trailing = ProtoField.bytes("tunstack.file.trailing", "Trailing bytes")
file_proto.fields = list_values(ff)

local fe = header_experts("tunstack.file")
file_proto.experts = list_values(fe)

local function file_flags_for(_)
    return {} -- protocol 171 defines no flags; any bit set is shown as unknown
end

-- OFFERs seen, for DATA offsets: offers[src .. "/" .. transfer id] = { chunk_size, name, size, frame }.
local offers = {}

function file_proto.init()
    offers = {}
end

local function add_ranges(tree, r, info, label)
    local n = add_uint(tree, r, ff.range_count, 2)
    if not n then return false end
    if n > MAX_RANGES then
        tree:add_proto_expert_info(fe.bad_payload, string.format("%d ranges, at most %d allowed", n, MAX_RANGES))
    end
    local text = {}
    for i = 1, n do
        local rr = r:take(8)
        if not rr then return false end
        local a, b = rr(0, 4):uint(), rr(4, 4):uint()
        local rt = tree:add(rr, string.format("Range %d: chunks [%d, %d)", i, a, b))
        rt:add(ff.range_start, rr(0, 4))
        rt:add(ff.range_end, rr(4, 4))
        if a >= b then
            rt:add_proto_expert_info(fe.bad_payload, "Empty or reversed range")
        end
        text[#text + 1] = string.format("[%d,%d)", a, b)
    end
    if #text > 0 then
        info[#info + 1] = string.format(" %s=%s", label, table.concat(text, ","))
    end
    return true
end

function file_proto.dissector(tvb, pinfo, tree)
    pinfo.cols.protocol = "TS-FILE"
    local root = tree:add(file_proto, tvb(), "tunstack file transfer (IP protocol 171)")
    local h = dissect_header(tvb, root, ff, fe, FILE_TYPES, file_flags_for)
    if not h then
        pinfo.cols.info = "FILE [too short]"
        return tvb:len()
    end
    local info = { "FILE ", h.type_name }
    local pt = root:add(tvb(HEADER_LEN, h.payload_len), string.format("Payload (%d bytes)", h.payload_len))
    local r = cursor(tvb, HEADER_LEN, HEADER_LEN + h.payload_len)
    local ok = true

    local id = add_uint(pt, r, ff.transfer_id, 8)
    if not id then
        ok = false
    else
        local key = tostring(pinfo.src) .. "/" .. id:tohex()
        local t = h.type
        if t == F_OFFER then
            h.seq_item:append_text(" (unused)")
            local size = add_uint(pt, r, ff.size, 8)
            local cs = size and add_uint(pt, r, ff.chunk_size, 4)
            local sha = cs and r:take(32)
            if sha then pt:add(ff.sha256, sha) end
            local name = sha and add_str(pt, r, ff.name_len, ff.name, 2)
            local channel = name and add_str(pt, r, ff.channel_len, ff.channel, 2)
            local sender = channel and add_str(pt, r, ff.sender_len, ff.sender, 2)
            ok = sender ~= nil
            if cs then
                if cs == 0 then
                    pt:add_proto_expert_info(fe.bad_payload, "Chunk size 0")
                else
                    local n = (size + (cs - 1)) / cs
                    pt:add(ff.chunks, tvb(HEADER_LEN + 16, 4), n):set_generated()
                end
            end
            if ok then
                offers[key] = { chunk_size = cs, name = name, size = size, frame = pinfo.number }
                info[#info + 1] = string.format(" name=%s size=%s chunk_size=%d from %s@%s",
                    preview(name), tostring(size), cs, preview(sender, 20), preview(channel, 20))
            end
        elseif t == F_ACCEPT then
            ok = add_ranges(pt, r, info, "have")
        elseif t == F_REFUSE or t == F_CANCEL then
            local reason = add_str(pt, r, ff.reason_len, ff.reason, 2)
            ok = reason ~= nil
            if ok then info[#info + 1] = string.format(' "%s"', preview(reason, 60)) end
        elseif t == F_DATA then
            h.seq_item:append_text(" (packet number)")
            local cr = r:take(4)
            if cr then
                local chunk = cr:uint()
                pt:add(ff.chunk, cr)
                local n = r:left()
                local o = offers[key]
                if o then
                    local off = UInt64(chunk) * o.chunk_size
                    pt:add(ff.offset, cr, off):set_generated()
                    pt:add(ff.offer_in, cr, o.frame):set_generated()
                    info[#info + 1] = string.format(" name=%s chunk=%d offset=%s", preview(o.name, 30), chunk, tostring(off))
                else
                    pt:add(cr, "[File offset unknown: the OFFER (chunk size) is not in the capture]")
                    info[#info + 1] = string.format(" chunk=%d", chunk)
                end
                info[#info + 1] = string.format(" len=%d pkt=%d", n, h.seq)
                if n > 0 then
                    local dr = r:take(n)
                    pt:add(ff.data, dr)
                    pt:add(ff.data_len, dr, n):set_generated()
                else
                    pt:add(ff.data_len, cr, 0):set_generated()
                end
            else
                ok = false
            end
        elseif t == F_ACK then
            h.ack_item:append_text(" (largest packet number received)")
            local cum = add_uint(pt, r, ff.cum, 4)
            if cum then
                info[#info + 1] = string.format(" cum=%d largest_pkt=%d", cum, h.ack)
                ok = add_ranges(pt, r, info, "held")
            else
                ok = false
            end
        elseif t == F_DONE then
            local sr = r:take(1)
            if sr then
                local st = sr:uint()
                pt:add(ff.status, sr)
                local reason = add_str(pt, r, ff.reason_len, ff.reason, 2)
                ok = reason ~= nil
                info[#info + 1] = string.format(" status=%s", DONE_STATUS[st] or tostring(st))
                if reason then info[#info + 1] = string.format(' "%s"', preview(reason, 60)) end
            else
                ok = false
            end
        elseif t == F_RESET then
            -- nothing after the id
        end
        if FILE_TYPES[t] then
            info[#info + 1] = " id=" .. hex64(id)
            -- ACCEPT, REFUSE, ACK, DONE and RESET come from the receiver; CANCEL from either side.
            local o = offers[key] or offers[tostring(pinfo.dst) .. "/" .. id:tohex()]
            if o and t ~= F_OFFER and t ~= F_DATA then
                pt:add(ff.offer_in, tvb(HEADER_LEN, 8), o.frame):set_generated()
            end
        end
    end
    if FILE_TYPES[h.type] then
        if not ok then
            pt:add_proto_expert_info(fe.bad_payload, h.type_name .. " payload cut short")
        elseif r:left() > 0 then
            pt:add(ff.trailing, r:take(r:left())):add_proto_expert_info(fe.bad_payload, "Bytes after the payload")
        end
    end
    if h.crc_status == 0 then
        info[#info + 1] = " [BAD CRC]"
    end
    pinfo.cols.info = table.concat(info)
    root:append_text(", " .. h.type_name)
    return tvb:len()
end

---------------------------------------------------------------------------------------------
-- Registration
---------------------------------------------------------------------------------------------

local ip_proto = DissectorTable.get("ip.proto")
ip_proto:add(170, msg_proto)
ip_proto:add(171, file_proto)
