//! The API's views of the stored records (`cairn_api`'s answers leave out what only the server
//! needs, such as hashes of secrets).

use cairn_api::audit::AuditEntryDto;
use cairn_api::auth::TokenInfo;
use cairn_api::inventory::DiskDto;
use cairn_api::sessions::LogLineDto;
use cairn_api::throttle::ThrottleRuleDto;
use cairn_api::users::UserDto;

use crate::{AuditEntry, Disk, LogLine, ThrottleRule, Token, User};

impl From<Disk> for DiskDto {
    fn from(d: Disk) -> DiskDto {
        DiskDto {
            id: d.id,
            vm_id: d.vm_id,
            disk_key: d.key,
            name: d.name,
            path: d.path,
            format: d.format,
            capacity_bytes: d.capacity_bytes,
            present: d.present,
        }
    }
}

impl From<LogLine> for LogLineDto {
    fn from(l: LogLine) -> LogLineDto {
        LogLineDto {
            id: l.id,
            task_id: l.task_id,
            at: l.at,
            level: l.level.as_str().into(),
            text: l.text,
        }
    }
}

impl From<Token> for TokenInfo {
    fn from(t: Token) -> TokenInfo {
        TokenInfo {
            id: t.id,
            kind: t.kind.as_str().into(),
            description: t.description,
            created_at: t.created_at,
            expires_at: t.expires_at,
        }
    }
}

impl From<User> for UserDto {
    fn from(u: User) -> UserDto {
        UserDto {
            id: u.id,
            name: u.name,
            role: u.role,
            created_at: u.created_at,
        }
    }
}

impl From<AuditEntry> for AuditEntryDto {
    fn from(e: AuditEntry) -> AuditEntryDto {
        AuditEntryDto {
            id: e.id,
            at: e.at,
            user: e.user,
            address: e.address,
            action: e.action,
            target: e.target,
            outcome: e.outcome,
            details: e.details,
            hash: e.hash,
        }
    }
}

impl From<ThrottleRule> for ThrottleRuleDto {
    fn from(r: ThrottleRule) -> ThrottleRuleDto {
        ThrottleRuleDto {
            id: r.id,
            from: r.rule.from_cidr,
            to: r.rule.to_cidr,
            limit_bytes: r.rule.limit_bytes,
            window: r.rule.window,
            created_at: r.created_at,
        }
    }
}
