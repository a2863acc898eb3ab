//! Loan terms, validated at construction: one error variant per invalid field.

use bitcoin::{Address, Network};
use serde::{Deserialize, Serialize};

use super::money::{Bps, Fiat};
use crate::util::AddressError;

/// Highest APR accepted: 100 % a year.
pub const MAX_APR: Bps = Bps(10_000);
/// Longest term accepted: ten years.
pub const MAX_TERM_SECS: u64 = 10 * 365 * 24 * 3600;
/// Largest principal accepted, in minor units (10^15: ten trillion dollars).
pub const MAX_PRINCIPAL_MINOR: u64 = 1_000_000_000_000_000;
/// The longest an offer waits for its collateral: 90 days (a deadline further off
/// could never be turned into escrow heights, and keeps an offer open for ever).
pub const MAX_FUNDING_WINDOW_SECS: u64 = 90 * 86_400;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TermsError {
    #[error("principal: must be above zero and at most {MAX_PRINCIPAL_MINOR} minor units")]
    Principal,
    #[error("apr: at most {MAX_APR}")]
    Apr,
    #[error("term_secs: must be above zero and at most ten years")]
    Term,
    #[error("initial_ltv: must be above zero and below margin_call_ltv")]
    InitialLtv,
    #[error("margin_call_ltv: must be above initial_ltv and below liquidation_ltv")]
    MarginCallLtv,
    #[error("liquidation_ltv: must be above margin_call_ltv and below 10000 bps")]
    LiquidationLtv,
    #[error("hard_liquidation_ltv: must be at least liquidation_ltv and below 10000 bps")]
    HardLiquidationLtv,
    #[error("liquidation_penalty: at most 5000 bps")]
    LiquidationPenalty,
    #[error("hysteresis: must be below margin_call_ltv - initial_ltv")]
    Hysteresis,
    #[error("confirm_ticks: must be at least 1")]
    ConfirmTicks,
    #[error("grace_blocks: must be at least 1")]
    GraceBlocks,
    #[error("recovery_delay_blocks: must be at least 1")]
    RecoveryDelayBlocks,
    #[error("funding_deadline: must be in the future and at most {MAX_FUNDING_WINDOW_SECS} seconds away")]
    FundingDeadline,
    #[error(transparent)]
    BorrowerReturnAddress(AddressError),
    #[error(transparent)]
    LenderPayoutAddress(AddressError),
    #[error("min_confirmations: must be between 1 and 100")]
    MinConfirmations,
    #[error("target_ltv: with partial_liquidation, must be above zero and at most initial_ltv")]
    TargetLtv,
    #[error("margin_call_levels: at most {MAX_MARGIN_CALL_LEVELS} levels, rising, the first equal to margin_call_ltv and each below liquidation_ltv")]
    MarginCallLevels,
}

/// The most margin-call levels an offer may list.
pub const MAX_MARGIN_CALL_LEVELS: usize = 5;

/// Terms as the lender offers them (unchecked).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TermsInput {
    pub principal: Fiat,
    pub apr: Bps,
    pub term_secs: u64,
    pub initial_ltv: Bps,
    pub margin_call_ltv: Bps,
    pub liquidation_ltv: Bps,
    pub hard_liquidation_ltv: Option<Bps>,
    pub liquidation_penalty: Bps,
    pub hysteresis: Bps,
    pub confirm_ticks: u32,
    pub grace_blocks: u32,
    pub recovery_delay_blocks: u32,
    /// Unix seconds.
    pub funding_deadline: u64,
    pub borrower_return_address: String,
    pub lender_payout_address: String,
    pub min_confirmations: u32,
    /// On a confirmed LTV breach, sell only what brings the loan back to `target_ltv`
    /// (see `calc::partial_sale`) instead of the whole collateral.
    #[serde(default)]
    pub partial_liquidation: bool,
    /// The LTV a partial liquidation restores (required with `partial_liquidation`,
    /// at most `initial_ltv`).
    #[serde(default)]
    pub target_ltv: Option<Bps>,
    /// Margin-call levels, each raising its own event once per crossing (with
    /// `hysteresis`); the first is `margin_call_ltv`. Empty: the one level
    /// `margin_call_ltv`.
    #[serde(default)]
    pub margin_call_levels: Vec<Bps>,
}

impl TermsInput {
    /// The margin-call levels in force: the listed ones, or `margin_call_ltv` alone.
    pub fn levels(&self) -> Vec<Bps> {
        if self.margin_call_levels.is_empty() {
            vec![self.margin_call_ltv]
        } else {
            self.margin_call_levels.clone()
        }
    }

    /// The target LTV of a partial liquidation, when the terms ask for one.
    pub fn partial_target(&self) -> Option<Bps> {
        self.target_ltv.filter(|_| self.partial_liquidation)
    }
}

/// Validated terms (construct with [`LoanTerms::new`]). A stored record is validated
/// again when read (`serde(try_from)`): no `LoanTerms` exists that `new` would refuse,
/// apart from a funding deadline that has since passed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "TermsRecord")]
pub struct LoanTerms {
    input: TermsInput,
    network: Network,
}

/// The stored shape of [`LoanTerms`], before validation.
#[derive(Deserialize)]
struct TermsRecord {
    input: TermsInput,
    network: Network,
}

impl TryFrom<TermsRecord> for LoanTerms {
    type Error = TermsError;
    fn try_from(r: TermsRecord) -> Result<Self, TermsError> {
        check(&r.input, r.network)?;
        Ok(Self {
            input: r.input,
            network: r.network,
        })
    }
}

/// The escrow's heights, fixed when the borrower accepts (see
/// [`LoanTerms::escrow_heights`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct EscrowSchedule {
    /// The latest height at which the loan can mature: it matures at activation +
    /// term or when the chain reaches this height, whichever comes first.
    pub maturity_height: u32,
    /// `maturity_height + grace_blocks`: the lender's solo (default) path opens here.
    pub default_height: u32,
    /// `default_height + recovery_delay_blocks`: the borrower's recovery path.
    pub recovery_height: u32,
}

/// The target block interval, for turning grace blocks into wall time.
pub const SECS_PER_BLOCK: u64 = 600;

/// The block interval assumed when turning the funding window and the term into the
/// escrow's `maturity_height`: 10 % faster than the target, so blocks coming up to 10 %
/// fast (as they do while hashrate grows) never bring maturity forward of the clock's
/// activation + term; the lender's solo path opens correspondingly later.
pub const FAST_SECS_PER_BLOCK: u64 = 540;

fn address(field: &str, text: &str, network: Network) -> Result<Address, AddressError> {
    crate::util::parse_address(field, text, network)
}

/// Every check of [`LoanTerms::new`] except the funding deadline's (which depends on
/// when the terms are made, not on the terms).
fn check(t: &TermsInput, network: Network) -> Result<(), TermsError> {
    if t.principal.minor == 0 || t.principal.minor > MAX_PRINCIPAL_MINOR {
        return Err(TermsError::Principal);
    }
    if t.apr > MAX_APR {
        return Err(TermsError::Apr);
    }
    if t.term_secs == 0 || t.term_secs > MAX_TERM_SECS {
        return Err(TermsError::Term);
    }
    if t.initial_ltv.0 == 0 || t.initial_ltv >= t.margin_call_ltv {
        return Err(TermsError::InitialLtv);
    }
    if t.margin_call_ltv >= t.liquidation_ltv {
        return Err(TermsError::MarginCallLtv);
    }
    if t.liquidation_ltv.0 >= 10_000 {
        return Err(TermsError::LiquidationLtv);
    }
    if let Some(hard) = t.hard_liquidation_ltv {
        if hard < t.liquidation_ltv || hard.0 >= 10_000 {
            return Err(TermsError::HardLiquidationLtv);
        }
    }
    if t.liquidation_penalty.0 > 5_000 {
        return Err(TermsError::LiquidationPenalty);
    }
    if t.hysteresis.0 >= t.margin_call_ltv.0 - t.initial_ltv.0 {
        return Err(TermsError::Hysteresis);
    }
    if t.confirm_ticks == 0 {
        return Err(TermsError::ConfirmTicks);
    }
    if t.grace_blocks == 0 {
        return Err(TermsError::GraceBlocks);
    }
    if t.recovery_delay_blocks == 0 {
        return Err(TermsError::RecoveryDelayBlocks);
    }
    // An offer leaves it empty: the borrower gives it when accepting.
    if !t.borrower_return_address.is_empty() {
        address(
            "borrower_return_address",
            &t.borrower_return_address,
            network,
        )
        .map_err(TermsError::BorrowerReturnAddress)?;
    }
    address("lender_payout_address", &t.lender_payout_address, network)
        .map_err(TermsError::LenderPayoutAddress)?;
    if t.min_confirmations == 0 || t.min_confirmations > 100 {
        return Err(TermsError::MinConfirmations);
    }
    if t.partial_liquidation
        && !t
            .target_ltv
            .is_some_and(|target| target.0 > 0 && target <= t.initial_ltv)
    {
        return Err(TermsError::TargetLtv);
    }
    if t.target_ltv.is_some() && !t.partial_liquidation {
        return Err(TermsError::TargetLtv);
    }
    let levels = &t.margin_call_levels;
    if !levels.is_empty()
        && (levels.len() > MAX_MARGIN_CALL_LEVELS
            || levels[0] != t.margin_call_ltv
            || levels.windows(2).any(|w| w[0] >= w[1])
            || levels.iter().any(|l| *l >= t.liquidation_ltv))
    {
        return Err(TermsError::MarginCallLevels);
    }
    Ok(())
}

impl LoanTerms {
    /// Check every field; `now` (unix seconds) dates the funding deadline check.
    pub fn new(input: TermsInput, network: Network, now: u64) -> Result<Self, TermsError> {
        check(&input, network)?;
        if input.funding_deadline <= now || input.funding_deadline - now > MAX_FUNDING_WINDOW_SECS {
            return Err(TermsError::FundingDeadline);
        }
        Ok(Self { input, network })
    }

    pub fn get(&self) -> &TermsInput {
        &self.input
    }

    pub fn network(&self) -> Network {
        self.network
    }

    /// The terms with the borrower's return address set (at acceptance), checked.
    pub fn with_borrower_return_address(&self, text: &str) -> Result<Self, TermsError> {
        address("borrower_return_address", text, self.network)
            .map_err(TermsError::BorrowerReturnAddress)?;
        let mut next = self.clone();
        next.input.borrower_return_address = text.to_owned();
        Ok(next)
    }

    /// Has the borrower's return address been given (at acceptance, or in the offer)?
    pub fn has_borrower_return_address(&self) -> bool {
        !self.input.borrower_return_address.is_empty()
    }

    /// The borrower's return address; set for every accepted loan.
    pub fn borrower_return_address(&self) -> Address {
        address(
            "borrower_return_address",
            &self.input.borrower_return_address,
            self.network,
        )
        .expect("checked in LoanTerms::new and when read")
    }

    pub fn lender_payout_address(&self) -> Address {
        address(
            "lender_payout_address",
            &self.input.lender_payout_address,
            self.network,
        )
        .expect("checked in LoanTerms::new and when read")
    }

    /// The escrow's absolute heights, fixed when the borrower accepts at `tip` and
    /// `now`. Interest and maturity run from activation, which can come as late as the
    /// funding deadline, so the heights are taken from the **latest possible
    /// maturity**: `maturity_height = tip + ceil((funding_deadline − now) / 540) +
    /// ceil(term / 540)` (see [`FAST_SECS_PER_BLOCK`]). The loan matures at activation +
    /// term *or* when the chain reaches `maturity_height`, whichever comes first, and
    /// is in default grace blocks later (see `Loan::default_due`): so however fast or
    /// slow blocks come, the lender's solo path (`default_height = maturity_height +
    /// grace_blocks`) never opens before maturity plus grace.
    pub fn escrow_heights(&self, tip: u32, now: u64) -> Option<EscrowSchedule> {
        let blocks = |secs: u64| u32::try_from(secs.div_ceil(FAST_SECS_PER_BLOCK)).ok();
        let deadline_blocks = blocks(self.input.funding_deadline.saturating_sub(now))?;
        let maturity_height = tip
            .checked_add(deadline_blocks)?
            .checked_add(blocks(self.input.term_secs)?)?;
        let default_height = maturity_height.checked_add(self.input.grace_blocks)?;
        let recovery_height = default_height.checked_add(self.input.recovery_delay_blocks)?;
        (recovery_height < 500_000_000).then_some(EscrowSchedule {
            maturity_height,
            default_height,
            recovery_height,
        })
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::loan::money::Currency;

    pub const NOW: u64 = 1_800_000_000;

    pub fn input() -> TermsInput {
        TermsInput {
            principal: Fiat::new(10_000_000, Currency::new("USD").unwrap()),
            apr: Bps(1_000),
            term_secs: 30 * 24 * 3600,
            initial_ltv: Bps(5_000),
            margin_call_ltv: Bps(7_000),
            liquidation_ltv: Bps(8_000),
            hard_liquidation_ltv: Some(Bps(9_000)),
            liquidation_penalty: Bps(500),
            hysteresis: Bps(200),
            confirm_ticks: 3,
            grace_blocks: 144,
            recovery_delay_blocks: 1_000,
            funding_deadline: NOW + 86_400,
            borrower_return_address:
                "bcrt1qft5p2uhsdcdc3l2ua4ap5qqfg4pjaqlp250x7us7a8qqhrxrxfsqseac85".into(),
            lender_payout_address: "bcrt1qw508d6qejxtdg4y5r3zarvary0c5xw7kygt080".into(),
            min_confirmations: 1,
            partial_liquidation: false,
            target_ltv: None,
            margin_call_levels: Vec::new(),
        }
    }

    pub fn terms() -> LoanTerms {
        LoanTerms::new(input(), Network::Regtest, NOW).unwrap()
    }

    #[test]
    fn good_terms_pass_and_heights_follow_the_latest_maturity() {
        let t = terms();
        // Accepted at NOW: the deadline is a day away (160 blocks of 540 s), the term
        // 30 days (4,800 of them).
        let s = t.escrow_heights(100, NOW).unwrap();
        assert_eq!(s.maturity_height, 100 + 160 + 4_800);
        assert_eq!(s.default_height, s.maturity_height + 144);
        assert_eq!(s.recovery_height, s.default_height + 1_000);
        // One second less to the deadline rounds the same; accepted later, fewer blocks.
        assert_eq!(t.escrow_heights(100, NOW + 1).unwrap(), s);
        assert_eq!(
            t.escrow_heights(100, NOW + 540).unwrap().maturity_height,
            s.maturity_height - 1
        );
    }

    #[test]
    fn stored_terms_are_validated_when_read() {
        let good = serde_json::to_string(&terms()).unwrap();
        let back: LoanTerms = serde_json::from_str(&good).unwrap();
        assert_eq!(back, terms());
        // A record edited around LoanTerms::new: initial above margin call.
        let bad = good.replace("\"initial_ltv\":5000", "\"initial_ltv\":7500");
        assert_ne!(bad, good);
        let err = serde_json::from_str::<LoanTerms>(&bad).unwrap_err();
        assert!(err.to_string().contains("initial_ltv"), "{err}");
        // A passed funding deadline is not an error on read.
        let mut old = input();
        old.funding_deadline = 1;
        let record = serde_json::json!({"input": old, "network": "regtest"});
        assert!(serde_json::from_value::<LoanTerms>(record).is_ok());
    }

    #[test]
    fn each_bad_field_has_its_error() {
        type Edit = fn(&mut TermsInput);
        let cases: Vec<(Edit, TermsError)> = vec![
            (|t| t.principal.minor = 0, TermsError::Principal),
            (
                |t| t.principal.minor = MAX_PRINCIPAL_MINOR + 1,
                TermsError::Principal,
            ),
            (|t| t.apr = Bps(10_001), TermsError::Apr),
            (|t| t.term_secs = 0, TermsError::Term),
            (|t| t.initial_ltv = Bps(0), TermsError::InitialLtv),
            (|t| t.initial_ltv = Bps(7_000), TermsError::InitialLtv),
            (
                |t| t.margin_call_ltv = Bps(8_000),
                TermsError::MarginCallLtv,
            ),
            (
                |t| t.liquidation_ltv = Bps(10_000),
                TermsError::LiquidationLtv,
            ),
            (
                |t| t.hard_liquidation_ltv = Some(Bps(7_999)),
                TermsError::HardLiquidationLtv,
            ),
            (
                |t| t.hard_liquidation_ltv = Some(Bps(10_000)),
                TermsError::HardLiquidationLtv,
            ),
            (
                |t| t.liquidation_penalty = Bps(5_001),
                TermsError::LiquidationPenalty,
            ),
            (|t| t.hysteresis = Bps(2_000), TermsError::Hysteresis),
            (|t| t.confirm_ticks = 0, TermsError::ConfirmTicks),
            (|t| t.grace_blocks = 0, TermsError::GraceBlocks),
            (
                |t| t.recovery_delay_blocks = 0,
                TermsError::RecoveryDelayBlocks,
            ),
            (|t| t.funding_deadline = NOW, TermsError::FundingDeadline),
            (
                |t| t.funding_deadline = NOW + MAX_FUNDING_WINDOW_SECS + 1,
                TermsError::FundingDeadline,
            ),
            (
                |t| t.funding_deadline = u64::MAX,
                TermsError::FundingDeadline,
            ),
            (|t| t.min_confirmations = 0, TermsError::MinConfirmations),
            (|t| t.partial_liquidation = true, TermsError::TargetLtv),
            (
                |t| {
                    t.partial_liquidation = true;
                    t.target_ltv = Some(Bps(5_001));
                },
                TermsError::TargetLtv,
            ),
            (|t| t.target_ltv = Some(Bps(4_000)), TermsError::TargetLtv),
            (
                |t| t.margin_call_levels = vec![Bps(7_500)],
                TermsError::MarginCallLevels,
            ),
            (
                |t| t.margin_call_levels = vec![Bps(7_000), Bps(7_000)],
                TermsError::MarginCallLevels,
            ),
            (
                |t| t.margin_call_levels = vec![Bps(7_000), Bps(8_000)],
                TermsError::MarginCallLevels,
            ),
        ];
        for (edit, want) in cases {
            let mut i = input();
            edit(&mut i);
            assert_eq!(LoanTerms::new(i, Network::Regtest, NOW).unwrap_err(), want);
        }
        let mut i = input();
        i.borrower_return_address = "bc1qw508d6qejxtdg4y5r3zarvary0c5xw7kv8f3t4".into();
        assert!(matches!(
            LoanTerms::new(i, Network::Regtest, NOW),
            Err(TermsError::BorrowerReturnAddress(_))
        ));
        let mut i = input();
        i.lender_payout_address = "nonsense".into();
        assert!(matches!(
            LoanTerms::new(i, Network::Regtest, NOW),
            Err(TermsError::LenderPayoutAddress(_))
        ));
        let err = TermsError::LiquidationLtv.to_string();
        assert!(err.starts_with("liquidation_ltv"), "{err}");
    }
}
