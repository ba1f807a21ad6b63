//! SDP (RFC 4566) as RTSP uses it: what ffmpeg, GStreamer and cameras send in ANNOUNCE and
//! DESCRIBE answers, and what we send, with the payload format parameters of RFC 6184
//! (H.264), RFC 7798 (H.265), RFC 3640 (AAC), RFC 6416 (AAC in LATM, read only), RFC 7587
//! (Opus) and RFC 3551 (G.711).

use std::fmt::Write;

use bytes::Bytes;
use ferrocast_media::{AudioCodec, TrackInfo, Tracks, VideoCodec, aac::AudioSpecificConfig, h264, h265};

use crate::base64;

/// Largest SDP we parse (also the RTSP body cap).
pub const MAX_SDP_LEN: usize = crate::message::MAX_BODY_LEN;
/// Most media sections we read.
pub const MAX_MEDIA: usize = 8;

/// One `m=` section.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Media {
    /// `video`, `audio`, ...
    pub kind: String,
    /// Payload type of the first format.
    pub payload_type: u8,
    /// `a=control:`.
    pub control: Option<String>,
    /// Encoding name from `a=rtpmap` (upper-case), or the static type's.
    pub encoding: String,
    /// Clock rate.
    pub clock_rate: u32,
    /// Channels (audio).
    pub channels: u8,
    /// `a=fmtp` parameters, names lower-cased.
    pub fmtp: Vec<(String, String)>,
}

impl Media {
    /// An fmtp parameter.
    pub fn param(&self, name: &str) -> Option<&str> {
        self.fmtp.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }
}

/// A parsed session description.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Sdp {
    /// Session-level `a=control:`.
    pub control: Option<String>,
    /// The media sections.
    pub media: Vec<Media>,
}

/// Why an SDP was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SdpError {
    /// Over [`MAX_SDP_LEN`] or [`MAX_MEDIA`].
    #[error("SDP too large")]
    TooLarge,
    /// A line that breaks the grammar.
    #[error("SDP line {line}: {why}")]
    Malformed {
        /// 1-based line number.
        line: usize,
        /// The rule broken.
        why: &'static str,
    },
}

/// Parses an SDP body. Unknown lines are ignored, as RFC 4566 5 asks.
pub fn parse(text: &[u8]) -> Result<Sdp, SdpError> {
    if text.len() > MAX_SDP_LEN {
        return Err(SdpError::TooLarge);
    }
    let text = String::from_utf8_lossy(text);
    let mut sdp = Sdp::default();
    for (i, raw) in text.lines().enumerate() {
        let line = raw.trim();
        let bad = |why| SdpError::Malformed { line: i + 1, why };
        let Some((k, v)) = line.split_once('=') else {
            if line.is_empty() {
                continue;
            }
            return Err(bad("no '='"));
        };
        match k {
            "m" => {
                if sdp.media.len() >= MAX_MEDIA {
                    return Err(SdpError::TooLarge);
                }
                let mut f = v.split_whitespace();
                let kind = f.next().ok_or_else(|| bad("empty m= line"))?.to_owned();
                let _port = f.next();
                let _proto = f.next();
                let pt: u8 = f.next().and_then(|p| p.parse().ok()).ok_or_else(|| bad("bad payload type"))?;
                let (encoding, clock_rate, channels) = match pt {
                    0 => ("PCMU", 8000, 1),
                    8 => ("PCMA", 8000, 1),
                    _ => ("", 0, 1),
                };
                sdp.media.push(Media {
                    kind,
                    payload_type: pt,
                    encoding: encoding.into(),
                    clock_rate,
                    channels,
                    ..Media::default()
                });
            }
            "a" => {
                let (name, value) = v.split_once(':').unwrap_or((v, ""));
                let Some(m) = sdp.media.last_mut() else {
                    if name == "control" {
                        sdp.control = Some(value.trim().to_owned());
                    }
                    continue;
                };
                match name {
                    "control" => m.control = Some(value.trim().to_owned()),
                    "rtpmap" => {
                        let (pt, enc) = value.split_once(' ').ok_or_else(|| bad("bad rtpmap"))?;
                        if pt.trim().parse::<u8>().ok() != Some(m.payload_type) {
                            continue;
                        }
                        let mut p = enc.trim().split('/');
                        m.encoding = p.next().unwrap_or("").to_ascii_uppercase();
                        m.clock_rate =
                            p.next().and_then(|c| c.parse().ok()).ok_or_else(|| bad("bad rtpmap clock rate"))?;
                        m.channels = p.next().and_then(|c| c.parse().ok()).unwrap_or(1);
                    }
                    "fmtp" => {
                        let (pt, params) = value.split_once(' ').unwrap_or((value, ""));
                        if pt.trim().parse::<u8>().ok() != Some(m.payload_type) {
                            continue;
                        }
                        for kv in params.split(';') {
                            let kv = kv.trim();
                            if kv.is_empty() {
                                continue;
                            }
                            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
                            m.fmtp.push((k.trim().to_ascii_lowercase(), v.trim().to_owned()));
                        }
                    }
                    _ => {}
                }
            }
            _ => {}
        }
    }
    Ok(sdp)
}

/// Codec parameters from a media section, when ferrocast carries the codec. For H.264/H.265
/// without sprop parameter sets (some cameras send them only in-band) the config is empty and
/// the depacketizer fills it from the stream.
pub fn track_info(m: &Media) -> Option<TrackInfo> {
    let b64 = |name: &str| -> Vec<Bytes> {
        m.param(name)
            .map(|v| v.split(',').filter_map(base64::decode).filter(|b| !b.is_empty()).map(Bytes::from).collect())
            .unwrap_or_default()
    };
    match m.encoding.as_str() {
        "H264" => {
            let sets = b64("sprop-parameter-sets");
            let sps: Vec<Bytes> = sets.iter().filter(|s| s[0] & 0x1f == h264::nal::SPS).cloned().collect();
            let pps: Vec<Bytes> = sets.iter().filter(|s| s[0] & 0x1f == h264::nal::PPS).cloned().collect();
            let config = h264::build_avcc(&sps, &pps).unwrap_or_default();
            Some(TrackInfo::Video { codec: VideoCodec::H264, config, clock_rate: m.clock_rate.max(1) })
        }
        "H265" => {
            let config = h265::build_hvcc(&b64("sprop-vps"), &b64("sprop-sps"), &b64("sprop-pps")).unwrap_or_default();
            Some(TrackInfo::Video { codec: VideoCodec::H265, config, clock_rate: m.clock_rate.max(1) })
        }
        "MPEG4-GENERIC" => {
            let hex = m.param("config")?;
            // Byte pairs, not string slices: the value may hold multi-byte characters.
            let config: Vec<u8> = hex
                .as_bytes()
                .chunks_exact(2)
                .filter_map(|p| std::str::from_utf8(p).ok().and_then(|h| u8::from_str_radix(h, 16).ok()))
                .collect();
            let asc = AudioSpecificConfig::parse(&config).ok()?;
            Some(TrackInfo::Audio {
                codec: AudioCodec::Aac,
                config: Bytes::from(config),
                sample_rate: asc.sample_rate,
                channels: asc.channels,
                clock_rate: m.clock_rate.max(1),
            })
        }
        // RFC 6416 7.1: AAC in LATM, carried on as AAC. The AudioSpecificConfig is in the
        // StreamMuxConfig of `config=`; with `cpresent=1` and no `config=` it comes in band,
        // and until then the track has an empty config and the rtpmap's rate and channels.
        "MP4A-LATM" => {
            let (config, _) = crate::codec::latm::sdp_config(m);
            match config {
                Some(c) => {
                    let asc = AudioSpecificConfig::parse(&c.asc).ok()?;
                    Some(TrackInfo::Audio {
                        codec: AudioCodec::Aac,
                        config: c.asc,
                        sample_rate: asc.sample_rate,
                        channels: asc.channels,
                        clock_rate: m.clock_rate.max(1),
                    })
                }
                None if m.param("cpresent").is_none_or(|v| v.trim() != "0") && m.param("config").is_none() => {
                    Some(TrackInfo::Audio {
                        codec: AudioCodec::Aac,
                        config: Bytes::new(),
                        sample_rate: m.clock_rate.max(1),
                        channels: m.channels.max(1),
                        clock_rate: m.clock_rate.max(1),
                    })
                }
                None => None,
            }
        }
        // RFC 7587: always 48000/2 in the rtpmap, whatever the encoder runs at.
        "OPUS" => Some(TrackInfo::Audio {
            codec: AudioCodec::Opus,
            config: Bytes::new(),
            sample_rate: 48_000,
            channels: m.channels.max(1),
            clock_rate: 48_000,
        }),
        "PCMA" | "PCMU" => Some(TrackInfo::Audio {
            codec: if m.encoding == "PCMA" { AudioCodec::Pcma } else { AudioCodec::Pcmu },
            config: Bytes::new(),
            sample_rate: m.clock_rate.max(1),
            channels: m.channels.max(1),
            clock_rate: m.clock_rate.max(1),
        }),
        _ => None,
    }
}

/// The RTP payload type ferrocast uses for a track: the static types of RFC 3551 for 8 kHz
/// mono G.711, else 96 for video and 97 for audio. [`describe`] announces the same.
pub fn payload_type(track: &TrackInfo) -> u8 {
    match track {
        TrackInfo::Video { .. } => 96,
        TrackInfo::Audio { codec: AudioCodec::Pcmu, sample_rate: 8000, channels: 1, .. } => 0,
        TrackInfo::Audio { codec: AudioCodec::Pcma, sample_rate: 8000, channels: 1, .. } => 8,
        TrackInfo::Audio { .. } => 97,
    }
}

/// Builds the SDP of a live stream for DESCRIBE. Tracks get `a=control:trackID=N` (0 video,
/// 1 audio); `connection` is the `c=` address (`0.0.0.0`, or a multicast group).
pub fn describe(tracks: &Tracks, origin: &str, connection: &str) -> (String, Vec<(u8, TrackInfo)>) {
    describe_with(tracks, origin, connection, &Presentation::default())
}

/// What distinguishes the SDP of a recording or file from a live stream's.
#[derive(Debug, Clone, Default)]
pub struct Presentation<'a> {
    /// The `a=range` values (`npt=0-30.100`, `clock=...`); none: `npt=now-`.
    pub ranges: &'a [String],
    /// Track controls as absolute URLs `BASE/trackID=N?QUERY` (the request URL's base and
    /// query): clients that append to the base (ffmpeg) and those that resolve relative
    /// references (RFC 3986) both reach the track of a URL with a query.
    pub absolute: Option<(&'a str, &'a str)>,
}

/// [`describe`] for a presentation.
pub fn describe_with(
    tracks: &Tracks,
    origin: &str,
    connection: &str,
    p: &Presentation<'_>,
) -> (String, Vec<(u8, TrackInfo)>) {
    let mut s = String::new();
    let _ = write!(
        s,
        "v=0\r\no=- 0 0 IN IP4 {origin}\r\ns=ferrocast\r\nc=IN IP4 {connection}\r\nt=0 0\r\na=tool:ferrocast\r\na=control:*\r\n"
    );
    if p.ranges.is_empty() {
        s.push_str("a=range:npt=now-\r\n");
    }
    for r in p.ranges {
        let _ = write!(s, "a=range:{r}\r\n");
    }
    let control = |n: u8| match p.absolute {
        Some((base, "")) => format!("a=control:{base}/trackID={n}\r\n"),
        Some((base, query)) => format!("a=control:{base}/trackID={n}?{query}\r\n"),
        None => format!("a=control:trackID={n}\r\n"),
    };
    let mut ids = Vec::new();
    if let Some(v @ TrackInfo::Video { codec, config, .. }) = &tracks.video {
        let fmtp = match codec {
            VideoCodec::H264 => h264::AvcConfig::parse(config).ok().map(|c| {
                let sets: Vec<String> = c.sps.iter().chain(&c.pps).map(|x| base64::encode(x)).collect();
                let [p, cc, l] = c.profile_compat_level;
                format!(
                    "packetization-mode=1;profile-level-id={p:02X}{cc:02X}{l:02X};sprop-parameter-sets={}",
                    sets.join(",")
                )
            }),
            VideoCodec::H265 => h265::HevcConfig::parse(config).ok().map(|c| {
                let j = |v: &[Bytes]| v.iter().map(|x| base64::encode(x)).collect::<Vec<_>>().join(",");
                format!("sprop-vps={};sprop-sps={};sprop-pps={}", j(&c.vps), j(&c.sps), j(&c.pps))
            }),
        };
        let name = if *codec == VideoCodec::H264 { "H264" } else { "H265" };
        let _ = write!(s, "m=video 0 RTP/AVP 96\r\na=rtpmap:96 {name}/90000\r\n");
        if let Some(f) = fmtp {
            let _ = write!(s, "a=fmtp:96 {f}\r\n");
        }
        s.push_str(&control(0));
        ids.push((0, v.clone()));
    }
    if let Some(a @ TrackInfo::Audio { codec: AudioCodec::Aac, config, sample_rate, channels, .. }) = &tracks.audio {
        let hex: String = config.iter().map(|b| format!("{b:02x}")).collect();
        let _ = write!(
            s,
            "m=audio 0 RTP/AVP 97\r\na=rtpmap:97 MPEG4-GENERIC/{sample_rate}/{channels}\r\na=fmtp:97 streamtype=5;profile-level-id=1;mode=AAC-hbr;sizelength=13;indexlength=3;indexdeltalength=3;config={hex}\r\n"
        );
        s.push_str(&control(1));
        ids.push((1, a.clone()));
    }
    if let Some(a @ TrackInfo::Audio { codec, sample_rate, channels, .. }) = &tracks.audio {
        let line = match codec {
            AudioCodec::Opus => {
                Some("m=audio 0 RTP/AVP 97\r\na=rtpmap:97 opus/48000/2\r\na=fmtp:97 sprop-stereo=1\r\n".to_owned())
            }
            // Static payload types of RFC 3551 for the usual 8 kHz mono.
            AudioCodec::Pcmu if *sample_rate == 8000 && *channels == 1 => {
                Some("m=audio 0 RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\n".to_owned())
            }
            AudioCodec::Pcma if *sample_rate == 8000 && *channels == 1 => {
                Some("m=audio 0 RTP/AVP 8\r\na=rtpmap:8 PCMA/8000\r\n".to_owned())
            }
            AudioCodec::Pcma | AudioCodec::Pcmu => {
                let name = if *codec == AudioCodec::Pcma { "PCMA" } else { "PCMU" };
                Some(format!("m=audio 0 RTP/AVP 97\r\na=rtpmap:97 {name}/{sample_rate}/{channels}\r\n"))
            }
            _ => None,
        };
        if let Some(l) = line {
            s.push_str(&l);
            s.push_str(&control(1));
            ids.push((1, a.clone()));
        }
    }
    (s, ids)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The SDP of an ANNOUNCE captured from ffmpeg (`testdata/ffmpeg5.1_announce_*.txt`:
    /// `ffmpeg -re -i in -c copy -f rtsp -rtsp_transport tcp rtsp://...`, ffmpeg 5.1.6).
    fn announce_body(capture: &[u8]) -> Bytes {
        let mut buf = bytes::BytesMut::from(capture);
        match crate::message::decode(&mut buf).unwrap() {
            Some(crate::message::Message::Request(r)) => r.body,
            other => panic!("{other:?}"),
        }
    }

    fn ffmpeg_h264_aac() -> Bytes {
        announce_body(include_bytes!("../testdata/ffmpeg5.1_announce_h264_aac.txt"))
    }

    #[test]
    fn ffmpeg_announce() {
        let sdp = parse(&ffmpeg_h264_aac()).unwrap();
        assert_eq!(sdp.media.len(), 2);
        assert_eq!(sdp.media[0].control.as_deref(), Some("streamid=0"));
        let v = track_info(&sdp.media[0]).unwrap();
        let TrackInfo::Video { codec: VideoCodec::H264, config, clock_rate: 90000 } = &v else { panic!("{v:?}") };
        assert_eq!(h264::AvcConfig::parse(config).unwrap().codec_string(), "avc1.64001e");
        let a = track_info(&sdp.media[1]).unwrap();
        assert!(matches!(
            a,
            TrackInfo::Audio { codec: AudioCodec::Aac, sample_rate: 44100, channels: 1, clock_rate: 44100, .. }
        ));
        assert_eq!(sdp.media[1].param("sizelength"), Some("13"));

        let sdp = parse(&announce_body(include_bytes!("../testdata/ffmpeg5.1_announce_h265_aac.txt"))).unwrap();
        let TrackInfo::Video { codec: VideoCodec::H265, config, .. } = track_info(&sdp.media[0]).unwrap() else {
            panic!()
        };
        assert_eq!(h265::HevcConfig::parse(&config).unwrap().codec_string(), "hvc1.1.6.L60.90");
    }

    #[test]
    fn describe_round_trips_through_parse() {
        let sdp = parse(&ffmpeg_h264_aac()).unwrap();
        let tracks = Tracks { video: track_info(&sdp.media[0]), audio: track_info(&sdp.media[1]), metadata: None };
        let (text, ids) = describe(&tracks, "127.0.0.1", "0.0.0.0");
        assert_eq!(ids.len(), 2);
        let back = parse(text.as_bytes()).unwrap();
        assert_eq!(track_info(&back.media[0]), tracks.video);
        assert_eq!(track_info(&back.media[1]), tracks.audio);
        assert_eq!(back.media[1].control.as_deref(), Some("trackID=1"));
    }

    #[test]
    fn g711_static_types_and_opus() {
        let sdp = parse(b"v=0\r\nm=audio 0 RTP/AVP 8\r\nm=audio 0 RTP/AVP 0\r\nm=audio 0 RTP/AVP 111\r\na=rtpmap:111 opus/48000/2\r\n").unwrap();
        let infos: Vec<TrackInfo> = sdp.media.iter().map(|m| track_info(m).unwrap()).collect();
        assert!(matches!(
            infos[0],
            TrackInfo::Audio { codec: AudioCodec::Pcma, sample_rate: 8000, channels: 1, clock_rate: 8000, .. }
        ));
        assert!(matches!(infos[1], TrackInfo::Audio { codec: AudioCodec::Pcmu, .. }));
        assert!(matches!(infos[2], TrackInfo::Audio { codec: AudioCodec::Opus, channels: 2, clock_rate: 48000, .. }));
        for info in infos {
            let (text, ids) = describe(&Tracks { audio: Some(info.clone()), ..Tracks::default() }, "h", "0.0.0.0");
            assert_eq!(ids.len(), 1);
            let back = parse(text.as_bytes()).unwrap();
            assert_eq!(back.media[0].payload_type, payload_type(&info));
            assert_eq!(track_info(&back.media[0]), Some(info));
        }
    }

    /// AAC in LATM as ffmpeg (`-rtpflags latm`) and GStreamer (`rtspclientsink`, which picks
    /// `rtpmp4apay` for AAC) announce it: an AAC track with the AudioSpecificConfig from the
    /// StreamMuxConfig of `config=`.
    #[test]
    fn latm_announces() {
        let sdp = parse(&announce_body(include_bytes!("../testdata/ffmpeg5.1_announce_h264_latm.txt"))).unwrap();
        let a = track_info(&sdp.media[1]).unwrap();
        assert_eq!(
            a,
            TrackInfo::Audio {
                codec: AudioCodec::Aac,
                config: Bytes::from_static(&[0x11, 0x90]),
                sample_rate: 48000,
                channels: 2,
                clock_rate: 48000
            }
        );
        let sdp = parse(&announce_body(include_bytes!("../testdata/gstreamer1.22_announce_latm.txt"))).unwrap();
        let a = track_info(&sdp.media[0]).unwrap();
        assert!(matches!(
            a,
            TrackInfo::Audio { codec: AudioCodec::Aac, sample_rate: 44100, channels: 1, clock_rate: 44100, .. }
        ));
        // In-band config only: a track whose config is not known yet.
        let sdp = parse(b"m=audio 0 RTP/AVP 96\r\na=rtpmap:96 MP4A-LATM/90000/2\r\na=fmtp:96 cpresent=1\r\n").unwrap();
        let a = track_info(&sdp.media[0]).unwrap();
        assert!(
            matches!(&a, TrackInfo::Audio { codec: AudioCodec::Aac, config, channels: 2, .. } if config.is_empty())
        );
        // cpresent=0 without a usable config: nothing to carry.
        let sdp = parse(b"m=audio 0 RTP/AVP 96\r\na=rtpmap:96 MP4A-LATM/44100\r\na=fmtp:96 cpresent=0;config=zz\r\n")
            .unwrap();
        assert_eq!(track_info(&sdp.media[0]), None);
    }

    /// Found by the `sdp` fuzz target: a config= value with multi-byte characters panicked
    /// on a string slice inside a character.
    #[test]
    fn fuzz_multibyte_config_hex() {
        if let Ok(s) = parse(include_bytes!("../testdata/fuzz_sdp_multibyte_config_hex.bin")) {
            for m in &s.media {
                let _ = track_info(m);
            }
        }
        let s =
            parse("m=audio 0 RTP/AVP 97\r\na=rtpmap:97 MPEG4-GENERIC/44100/2\r\na=fmtp:97 config=1é10\r\n".as_bytes())
                .unwrap();
        assert_eq!(track_info(&s.media[0]), None);
    }

    #[test]
    fn malformed_and_oversized() {
        assert!(matches!(parse(b"v=0\r\nm=video x\r\n"), Err(SdpError::Malformed { line: 2, .. })));
        assert!(matches!(parse(b"v=0\r\ngarbage\r\n"), Err(SdpError::Malformed { line: 2, .. })));
        let many = "m=video 0 RTP/AVP 96\r\n".repeat(MAX_MEDIA + 1);
        assert_eq!(parse(many.as_bytes()), Err(SdpError::TooLarge));
    }
}
